"""Reading HL7 v2 fields, components and subcomponents of one segment, unescaped.

hl7apy finds the groups; its per-version datatype trees differ (a TS is a composite in
2.4 and a primitive in 2.5), so the values are read from each segment's ER7 text with
the message's own delimiters instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.hl7v2.er7 import unescape

from .strings import fhir_string


@dataclass(frozen=True)
class Delimiters:
    field: str = "|"
    encoding: str = "^~\\&"  # component, repetition, escape, subcomponent
    codec: str = "utf-8"

    @property
    def component(self) -> str:
        return self.encoding[0]

    @property
    def repetition(self) -> str:
        return self.encoding[1]

    @property
    def subcomponent(self) -> str:
        return self.encoding[3] if len(self.encoding) > 3 else "&"

    def text(self, raw: str) -> str:
        """``raw`` with its escapes decoded (``\\.br\\`` as a newline), fit for a FHIR
        string (``\\X0C\\``, a form feed, as a newline too: see strings.py)."""
        return fhir_string(unescape(raw, self.field, self.encoding, self.codec))


class Composite:
    """One repetition of a field (or one component): its parts counted from 1.

    A field's parts are components, and each component's parts are subcomponents:
    ``field.get(1, 2)`` is the second subcomponent of the first component.
    """

    def __init__(self, raw: str, delimiters: Delimiters, separator: str = "") -> None:
        self.raw = raw
        self.delimiters = delimiters
        self._separator = separator or delimiters.component
        self._parts = raw.split(self._separator)

    def __bool__(self) -> bool:
        return bool(self.raw.strip())

    def component(self, number: int) -> Composite:
        """Part ``number`` as a composite of its subcomponents."""
        raw = self._parts[number - 1] if number <= len(self._parts) else ""
        return Composite(raw, self.delimiters, self.delimiters.subcomponent)

    def get(self, component: int = 1, sub: int = 1) -> str | None:
        """The unescaped value of ``component.sub``; None when absent or blank."""
        raw = self._parts[component - 1] if component <= len(self._parts) else ""
        if self._separator != self.delimiters.subcomponent:
            parts = raw.split(self.delimiters.subcomponent)
            raw = parts[sub - 1] if sub <= len(parts) else ""
        return self.delimiters.text(raw).strip() or None

    @property
    def text(self) -> str:
        """The whole value as text: a primitive's escaped delimiters become characters."""
        return self.delimiters.text(self.raw)


class Segment:
    """A segment's fields, numbered as HL7 numbers them (``MSH-9`` is ``field(9)``)."""

    def __init__(self, raw: str, delimiters: Delimiters) -> None:
        self.name = raw[:3]
        self.delimiters = delimiters
        fields = raw.split(delimiters.field)
        if self.name == "MSH":  # MSH-1 is the field separator itself
            fields = [fields[0], delimiters.field, *fields[1:]]
        self._fields = fields

    def repetitions(self, number: int) -> list[Composite]:
        """Every non-empty repetition of field ``number``."""
        if self.name == "MSH" and number <= 2:  # the delimiters themselves
            return []
        raw = self._fields[number] if number < len(self._fields) else ""
        reps = [Composite(r, self.delimiters) for r in raw.split(self.delimiters.repetition)]
        return [r for r in reps if r]

    def field(self, number: int) -> Composite:
        """The first repetition of field ``number`` (empty when absent)."""
        reps = self.repetitions(number)
        return reps[0] if reps else Composite("", self.delimiters)

    def get(self, number: int, component: int = 1, sub: int = 1) -> str | None:
        return self.field(number).get(component, sub)
