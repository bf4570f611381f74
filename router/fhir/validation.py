"""Checking what a FHIR endpoint receives: JSON, the shape tie routes on, then the models.

The engine parses a request for the shape it routes on (``message_header``,
``require_resource``); a validation worker (router.fhir.validators) parses the same body
at the same time and validates it with fhir.resources (R4B models for R4, or STU3 where
a channel says so). Every problem is an ``Issue`` with a FHIRPath-style location, e.g.
``Bundle.entry[1].resource.participant[0].status``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import ValidationError

from router.fhir.outcome import Issue, Rejected, reject

Version = Literal["R4", "STU3"]


def parse_json(body: bytes) -> Any:
    """The document; 400 ``structure`` with the line and column of broken JSON.

    JSON that parses but that Python will not hold (nesting past the recursion limit, an
    integer of more than 4300 digits) is refused as well: uncaught, it was a 500 here and
    killed the validation worker parsing the same body.

    So is an object that names a member twice (``{"id": "a", "id": "b"}``): parsers differ
    in which one they keep, so a receiver could read another message than the one tie
    checked, stored and routed. Checking costs each object a call: a 26 KB Bundle parses in
    about 108 us instead of 65 (its models take 2 ms); where the repeat is is worked out
    only for a refused body, by reading it again.

    The body is read as UTF-8 only: a UTF-8 byte order mark, which RFC 8259 §8.1 forbids a
    sender to add, is refused by name, and UTF-16 or UTF-32 (which ``json.loads`` would
    detect and read) as not UTF-8. tie forwards a body as it came, and a receiver whose
    parser does not ignore a BOM would refuse what tie had already acknowledged."""
    if body.startswith(codecs.BOM_UTF8):
        raise reject(
            400,
            "structure",
            "the body begins with a UTF-8 byte order mark (EF BB BF), which JSON must not "
            "(RFC 8259 section 8.1): send the JSON without it",
        )
    try:
        # surrogatepass: as json.loads reads bytes (a lone surrogate is refused later).
        text = body.decode("utf-8", "surrogatepass")
        return json.loads(text, object_pairs_hook=_unique_members)
    except _DuplicateMember:
        raise _duplicate_refused(json.loads(text, object_pairs_hook=_marked_duplicates)) from None
    except UnicodeDecodeError as exc:
        raise reject(400, "structure", f"the body is not UTF-8: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise reject(
            400, "structure", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:
        raise reject(400, "structure", "invalid JSON: nested too deeply") from exc
    except ValueError as exc:
        raise reject(400, "structure", f"invalid JSON: {exc}") from exc


class _DuplicateMember(Exception):
    """An object of the body names a member twice (not a ValueError: that is bad JSON)."""


class _Duplicated(dict[str, Any]):
    """An object that named ``member`` twice (the second reading of a refused body)."""

    member = ""


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise _DuplicateMember
    return document


def _marked_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) == len(pairs):
        return document
    duplicated = _Duplicated(document)
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            duplicated.member = name
            break
        seen.add(name)
    return duplicated


def _duplicate_refused(document: Any) -> Rejected:
    """400 naming the first member named twice, in document order, and where it is, e.g.
    ``Bundle.entry[1].resource.id``. Walked without recursion: the body may nest as deep as
    the parser allowed."""
    root = document.get("resourceType") if isinstance(document, dict) else None
    pending: list[tuple[str, Any]] = [(root if isinstance(root, str) and root else "$", document)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, _Duplicated):
            return reject(
                400,
                "structure",
                f"duplicate key {value.member!r} in the object at {path}: a member may be "
                "named once only (parsers differ in which one they keep)",
                f"{path}.{value.member}",
            )
        if isinstance(value, dict):
            pending.extend((f"{path}.{name}", item) for name, item in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((f"{path}[{i}]", item) for i, item in reversed(list(enumerate(value))))
    raise AssertionError("a body refused for a duplicate key has one")


def message_header(
    document: Any, *, events: Iterable[str], event_system: str, version: Version
) -> dict[str, Any]:
    """The shape tie routes on, without the models: a message Bundle whose first entry is a
    MessageHeader of a known event; its header."""
    require_resource(document, "Bundle")
    if document.get("type") != "message":
        raise reject(
            400,
            "invalid",
            f"the Bundle is not a message (type is {document.get('type')!r})",
            "Bundle.type",
        )
    entries = document.get("entry")
    first = entries[0] if isinstance(entries, list) and entries else None
    resource = first.get("resource") if isinstance(first, dict) else None
    if not isinstance(resource, dict) or resource.get("resourceType") != "MessageHeader":
        found = resource.get("resourceType") if isinstance(resource, dict) else None
        raise reject(
            400,
            "invalid",
            f"the first entry must be a MessageHeader (found {found or 'none'})",
            "Bundle.entry[0].resource",
        )
    element = "eventCoding" if version == "R4" else "event"
    coding = resource.get(element)
    system = _text(coding.get("system")) if isinstance(coding, dict) else None
    code = _text(coding.get("code")) if isinstance(coding, dict) else None
    if code not in set(events) or (event_system and system != event_system):
        raise reject(
            400,
            "code-invalid",
            f"unknown event {system or ''}|{code or ''} (known: {', '.join(events)} "
            f"of {event_system})",
            f"Bundle.entry[0].resource.{element}",
        )
    return resource


def _text(value: Any) -> str | None:
    """A string element; anything else (a list, an object) names no event: as a set member
    a list or an object raised TypeError, and the sender got a bare 500."""
    return value if isinstance(value, str) else None


def require_resource(document: Any, resource_type: str) -> None:
    """A FHIR resource of ``resource_type`` (its models not checked)."""
    found = document.get("resourceType") if isinstance(document, dict) else None
    if found != resource_type:
        what = f"a {found}" if isinstance(found, str) else "not a FHIR resource"
        raise reject(400, "invalid", f"expected a {resource_type}, got {what}", "resourceType")


def validate(document: dict[str, Any], version: Version) -> Any:
    """The fhir.resources model of ``document``; 400 with an issue for every error."""
    if version == "R4":
        from fhir.resources.R4B import get_fhir_model_class
    else:
        from fhir.resources.STU3 import get_fhir_model_class
    kind = document["resourceType"]
    try:
        model = get_fhir_model_class(kind)
    except ValueError as exc:
        raise reject(400, "not-supported", f"{kind} is not a FHIR {version} resource") from exc
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise Rejected(400, [_issue(kind, error) for error in exc.errors()]) from exc
    except (TypeError, AttributeError) as exc:
        # fhir.resources' own validators assume the JSON type they expect (a number where a
        # uri belongs, a resourceType that is not text): the input is wrong, so a 400, not a
        # 500 the sender would send again.
        text = f"the FHIR models could not read the {kind}: {type(exc).__name__}: {exc}"
        raise reject(400, "value", text) from exc


def _issue(kind: str, error: Any) -> Issue:
    where = kind
    for part in error["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        else:
            where += "." + ("resourceType" if part == "resource_type" else str(part))
    code = {"missing": "required", "extra_forbidden": "structure"}.get(error["type"], "value")
    if error["type"].endswith(".missing"):
        code = "required"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown element"
    return Issue(code, message, where)
