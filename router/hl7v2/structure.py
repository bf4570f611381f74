"""Structure-aware parsing and strict validation with hl7apy (slow: never on the hot path).

hl7apy is imported inside the functions so that importing ``router.hl7v2`` stays cheap.
"""

from collections import Counter
from typing import Any

from router.hl7v2.er7 import Er7Message


class StructureError(ValueError):
    """The message does not conform to its HL7 version; the text is hl7apy's reason."""


def _structure_name(message: Er7Message) -> str:
    """The message structure (e.g. ``ORU_R01``) hl7apy should check against.

    hl7apy builds it from MSH-9.3, else from ``<code>_<trigger>``; before v2.3.1 MSH-9 has
    no structure component, so an ACK would become ``ACK_R01``, which hl7apy does not know
    (and cannot create under strict validation). Every ACK has the structure ``ACK``.
    """
    structure = message.get("MSH-9.3")
    if structure:
        return structure
    code = message.get("MSH-9.1") or ""
    return code if code == "ACK" else f"{code}_{message.get('MSH-9.2') or ''}"


def _segment_names(element: Any) -> list[str]:
    names: list[str] = []
    for child in element.children:
        if child.classname == "Segment":
            names.append(child.name)
        else:
            names.extend(_segment_names(child))
    return names


def _parse(message: Er7Message, strict: bool) -> Any:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import Message
    from hl7apy.exceptions import InvalidName
    from hl7apy.parser import get_message_info, parse_segments

    level = VALIDATION_LEVEL.STRICT if strict else VALIDATION_LEVEL.TOLERANT
    text = "\r".join(message.segments)  # hl7apy only understands CR-separated segments
    encoding_chars, _, version = get_message_info(text)
    options = {"version": version, "validation_level": level, "encoding_chars": encoding_chars}
    try:
        tree = Message(name=_structure_name(message), **options)
    except InvalidName:
        if strict:
            raise
        tree = Message(**options)  # unknown structure: a flat list of segments
    reference = getattr(tree, "reference", None)  # a nameless hl7apy Message has none
    tree.children = parse_segments(
        text, tree.version, encoding_chars, level, reference, reference is not None
    )
    return tree


def _check_nothing_dropped(message: Er7Message, tree: Any) -> None:
    """hl7apy's group search silently discards segments the structure has no place for."""
    dropped = Counter(message.segment_names()) - Counter(_segment_names(tree))
    if dropped:
        names = ", ".join(sorted(dropped.elements()))
        raise StructureError(f"segments not allowed where they are for {tree.name}: {names}")


def parse_structured(raw: bytes) -> Any:
    """The hl7apy tree of ``raw``, segments grouped as its structure says (tolerant).

    Raises StructureError rather than hand over a tree that lost segments (e.g. a Z
    segment the structure has no place for).
    """
    message = Er7Message(raw)
    tree = _parse(message, strict=False)
    _check_nothing_dropped(message, tree)
    return tree


def validate_strict(raw: bytes) -> None:
    """Raise StructureError unless ``raw`` passes hl7apy's strict validation for its version.

    Besides what hl7apy checks, a segment that its group search would silently discard is
    reported too. Unreadable ER7 raises Er7Error.
    """
    message = Er7Message(raw)
    try:
        tree = _parse(message, strict=True)
        tree.validate()
    except Exception as exc:  # hl7apy reports problems as ValueError, HL7apyException, ...
        raise StructureError(f"{type(exc).__name__}: {exc}") from exc
    _check_nothing_dropped(message, tree)
