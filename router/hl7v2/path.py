"""HL7 v2 field paths such as ``PID-3(2).1`` or ``OBX(*)-5``, parsed once and cached."""

import re
from dataclasses import dataclass
from functools import lru_cache

_PATH = re.compile(
    r"([A-Z][A-Z0-9]{2})(?:\((\d+|\*)\))?-(\d+)(?:\((\d+|\*)\))?(?:\.(\d+)(?:\.(\d+))?)?",
    re.ASCII,
)
ANY = 0  # the index written "*": every segment or repetition


@dataclass(frozen=True, slots=True)
class FieldPath:
    """A parsed path. Indexes are 1-based, ``ANY`` for ``*``, ``None`` when not given.

    A segment or repetition index that is not given means the first one to
    ``Er7Message.get`` and every one to ``Er7Message.get_all``.
    """

    segment: str
    segment_index: int | None
    field: int
    repetition: int | None
    component: int | None
    subcomponent: int | None


def _number(text: str, path: str, what: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"bad field path {path!r}: {what} must be 1 or more")
    return value


def _index(text: str | None, path: str, what: str) -> int | None:
    if text is None:
        return None
    return ANY if text == "*" else _number(text, path, what)


@lru_cache(maxsize=4096)
def parse_path(path: str) -> FieldPath:
    """Parse ``SEG[(n|*)]-field[(n|*)][.component[.subcomponent]]``; ValueError if malformed.

    The segment id is case-insensitive. Cached because the same few paths from channel
    files are looked up for every message.
    """
    match = _PATH.fullmatch(path.strip().upper())
    if match is None:
        raise ValueError(
            f"bad field path {path!r}: expected e.g. PID-3, PID-3.1, PID-3(2).1.2, OBX(2)-5"
        )
    segment, seg_index, field, repetition, component, subcomponent = match.groups()
    return FieldPath(
        segment=segment,
        segment_index=_index(seg_index, path, "segment index"),
        field=_number(field, path, "field number"),
        repetition=_index(repetition, path, "repetition"),
        component=None if component is None else _number(component, path, "component"),
        subcomponent=None if subcomponent is None else _number(subcomponent, path, "subcomponent"),
    )
