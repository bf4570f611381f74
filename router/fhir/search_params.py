"""FHIR R4 search values as the ServiceRequest registry reads them (search.html#combining).

A repeated parameter means "and" (``status=a&status=b`` needs both), a comma inside one
value "or" (``status=a,b``); ``\\,``, ``\\|``, ``\\$`` and ``\\\\`` are the characters
themselves. A token is ``[system|]code``.

Parameters tie does not know are ignored, as R4 advises, unless the client sends
``Prefer: handling=strict`` (then 400); a known one with a modifier or form tie does not
support (``status:not``, ``patient=Patient/1``) is always 400, never ignored: ignoring
it would widen the search.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from router.fhir.outcome import Rejected, reject

MAX_VALUES = 50  # values of one parameter, repeats and alternatives together


@dataclass(frozen=True)
class Token:
    """``system`` None: any system (``code``); ``code`` None: any code (``system|``)."""

    system: str | None
    code: str | None


# Every group must match; within a group, any one token.
Criteria = tuple[tuple[Token, ...], ...]


def _split(text: str, separator: str) -> list[str]:
    """``text`` cut at each ``separator`` no backslash escapes; escapes are kept."""
    parts, start, escaped = [], 0, False
    for at, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


def _unescape(text: str) -> str:
    out, escaped = [], False
    for char in text:
        if char == "\\" and not escaped:
            escaped = True
            continue
        out.append(char)
        escaped = False
    return "".join(out)


def token(text: str) -> Token:
    """``system|code``, ``|code`` (no system), ``system|`` or ``code`` (the last unescaped
    ``|`` separates them)."""
    parts = _split(text, "|")
    if len(parts) == 1:
        return Token(None, _unescape(text))
    return Token(_unescape("|".join(parts[:-1])), _unescape(parts[-1]) or None)


def tokens(name: str, values: list[str]) -> Criteria:
    """Each value of a token parameter a group of its comma-separated alternatives; empty
    values and alternatives are ignored. More than MAX_VALUES in all raises Rejected."""
    groups = []
    for value in values:
        group = tuple(token(part) for part in _split(value, ",") if part)
        if group:
            groups.append(group)
    if sum(len(group) for group in groups) > MAX_VALUES:
        raise too_many(name)
    return tuple(groups)


def too_many(name: str) -> Rejected:
    return reject(400, "too-costly", f"at most {MAX_VALUES} search values", name)


def strict(prefer: str | None) -> bool:
    """Whether ``Prefer`` asks for ``handling=strict``."""
    wanted = (part.split(";")[0].replace(" ", "").lower() for part in (prefer or "").split(","))
    return "handling=strict" in wanted


def ignored(names: Iterable[str], supported: Collection[str], *, strict: bool) -> list[str]:
    """The parameters of ``names`` to ignore: those unknown, unless ``strict``. Raises
    Rejected for one unknown under ``strict``, or a supported one in a form not supported
    (``base:modifier`` or ``base.chain``)."""
    bases = {name.partition(":")[0] for name in supported}
    unknown = []
    for name in dict.fromkeys(names):
        if name in supported:
            continue
        if name.partition(":")[0].partition(".")[0] in bases:
            listed = ", ".join(supported)
            raise reject(400, "not-supported", f"{name!r} is not supported ({listed} are)", name)
        if strict:
            raise reject(400, "not-supported", f"unknown search parameter {name!r}", name)
        unknown.append(name)
    return unknown
