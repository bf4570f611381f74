"""Message content made readable: HL7 v2 as segments and numbered fields, JSON indented.

Uses the fast ER7 reader (``router.hl7v2.er7``), not hl7apy: a detail view must be
cheap and must show a malformed message as well as it can rather than fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.console.templating import pretty_json, text
from router.hl7v2.er7 import Er7Error, Er7Message

MAX_SEGMENTS = 2000


@dataclass(frozen=True)
class Field:
    name: str  # e.g. PID-5
    value: str  # as sent, escapes and separators included
    # Its repetitions, each as its components: shown one a line, so that a second identifier
    # (PID-3 633^^^R0A^MR~9449305552^^^NHS^NH) does not run on from the first.
    repetitions: list[list[str]]


@dataclass(frozen=True)
class Segment:
    name: str
    fields: list[Field]


@dataclass(frozen=True)
class View:
    """How to show one payload: ``kind`` is ``hl7``, ``json`` or ``text``."""

    kind: str
    text: str
    segments: list[Segment]
    problem: str | None = None


def view(payload: bytes | str | None, content_type: str) -> View:
    """HL7 v2 bytes are read in their own codec (MSH-18, else latin-1 when they are not
    UTF-8), as the engine and ``run.py show`` read them: a PAS sending ISO 8859-1 has its
    Zoë shown, not Zo\ufffd."""
    raw = text(payload)
    if "json" in content_type:
        return View("json", pretty_json(raw), [])
    if raw.lstrip().startswith("MSH"):
        try:
            message = Er7Message(payload if isinstance(payload, bytes) else raw)
        except Er7Error as exc:
            return View("text", raw, [], f"not readable as HL7 v2: {exc}")
        if isinstance(payload, bytes):
            raw = payload.decode(message.codec, errors="replace")
        return View("hl7", raw, segments(message))
    return View("text", raw, [])


def segments(message: Er7Message) -> list[Segment]:
    """Every segment with its non-empty fields, numbered as HL7 numbers them (MSH-1 is the
    field separator itself, so MSH's fields are shifted by one)."""
    sep, component = message.field_sep, message.encoding[0]
    repetition = message.encoding[1:2]
    out = []
    for raw in message.segments[:MAX_SEGMENTS]:
        values = raw.split(sep)
        name = values[0]
        if name == "MSH":
            values = ["MSH", sep, *values[1:]]
        fields = [
            _field(name, number, value, component, repetition)
            for number, value in enumerate(values[1:], start=1)
            if value
        ]
        out.append(Segment(name, fields))
    return out


def _field(segment: str, number: int, value: str, component: str, repetition: str) -> Field:
    name = f"{segment}-{number}"
    if segment == "MSH" and number in (1, 2):  # the separators themselves
        return Field(name, value, [[value]])
    repeats = value.split(repetition) if repetition else [value]
    return Field(name, value, [r.split(component) for r in repeats])
