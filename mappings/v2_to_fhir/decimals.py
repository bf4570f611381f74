"""FHIR decimals that keep the precision the laboratory wrote, and the JSON that shows it.

FHIR says a decimal's precision is part of its value (``0.50`` is not ``0.5``) and must be
kept. A Python float keeps neither trailing zeros nor more than 17 significant digits, so a
mapped number is a ``FhirDecimal``: it compares and validates as the float it is close
to, and ``to_json`` writes it as the lab wrote it. ``json.dumps`` cannot: it writes every
float subclass with ``float.__repr__``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class FhirDecimal(float):
    """A float that remembers its exact text (``"0.50"``), written so by ``to_json``."""

    __slots__ = ("text",)

    def __new__(cls, exact: Decimal) -> FhirDecimal:
        number = super().__new__(cls, exact)
        number.text = format(exact, "f")  # plain notation, canonical JSON: 0.50, -2.30, 7
        return number

    def __reduce__(self) -> tuple[Any, ...]:
        return (FhirDecimal, (Decimal(self.text),))


def to_json(value: Any, indent: int = 2) -> str:
    """``json.dumps(value, indent=indent, ensure_ascii=False)``, each ``FhirDecimal`` as written."""
    return _encode(value, indent, 0)


def _encode(value: Any, indent: int, level: int) -> str:
    if isinstance(value, FhirDecimal):
        return value.text
    if isinstance(value, dict) and value:
        inner = "\n" + " " * (indent * (level + 1))
        items = (
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_encode(v, indent, level + 1)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "\n" + " " * (indent * level) + "}"
    if isinstance(value, list) and value:
        inner = "\n" + " " * (indent * (level + 1))
        items = (f"{inner}{_encode(v, indent, level + 1)}" for v in value)
        return "[" + ",".join(items) + "\n" + " " * (indent * level) + "]"
    return json.dumps(value, ensure_ascii=False)
