"""Declarative conditions for filters and routes, compiled once into predicates.

A condition names a ``field`` (an HL7 v2 path such as ``MSH-9.1``, or a FHIR path such
as ``MessageHeader.eventCoding.code`` for FHIR messages) and one test:
``equals``, ``in``, ``matches`` or ``exists``; or combines others with ``not``,
``any`` and ``all``. A field with several values (repeated fields or segments)
passes a test when any of its values does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FieldSource(Protocol):
    """What a condition reads: every value of a field path in one message."""

    def values(self, path: str) -> list[str]: ...


Predicate = Callable[[FieldSource], bool]
_TESTS = ("equals", "in_", "matches", "exists")
_COMBINATORS = ("not_", "any", "all")


def _as_text(value: Any) -> Any:
    """A YAML number becomes the text it is compared as; a YAML boolean is refused.

    Unquoted ``NO``, ``yes``, ``on`` or ``false`` load as booleans, and comparing
    ``"False"`` with a field would silently never match.
    """
    if isinstance(value, bool):
        raise ValueError(
            "an unquoted yes, no, on, off, true or false is a YAML boolean: quote the value"
        )
    return str(value) if isinstance(value, int | float) else value


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    field: str | None = None
    equals: str | None = None
    in_: list[str] | None = Field(default=None, alias="in")
    matches: str | None = None
    exists: bool | None = None
    not_: Condition | None = Field(default=None, alias="not")
    any: list[Condition] | None = None
    all: list[Condition] | None = None

    @field_validator("equals", mode="before")
    @classmethod
    def _scalar_as_text(cls, value: Any) -> Any:
        return _as_text(value)

    @field_validator("in_", mode="before")
    @classmethod
    def _list_as_text(cls, value: Any) -> Any:
        return [_as_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("matches")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return value

    @field_validator("field")
    @classmethod
    def _valid_path(cls, value: str | None) -> str | None:
        if value is not None:
            from router.field_paths import check_field_path

            check_field_path(value)
        return value

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [name for name in _TESTS if getattr(self, name) is not None]
        combinators = [name for name in _COMBINATORS if getattr(self, name) is not None]
        chosen = [name.rstrip("_") for name in tests + combinators]
        if len(chosen) != 1:
            raise ValueError(
                "a condition needs exactly one of equals, in, matches, exists, not, any, all"
                + (f" (found {', '.join(chosen)})" if chosen else "")
            )
        if tests and self.field is None:
            raise ValueError(f"'{chosen[0]}' needs a 'field'")
        if combinators and self.field is not None:
            raise ValueError(f"'{chosen[0]}' combines conditions and takes no 'field'")
        return self


def compile_conditions(conditions: Sequence[Condition]) -> Predicate:
    """All of ``conditions`` must hold; an empty list always holds."""
    predicates = [compile_condition(c) for c in conditions]
    return lambda message: all(p(message) for p in predicates)


def compile_condition(condition: Condition) -> Predicate:
    """One predicate for one condition, with its regex and set built once."""
    field = condition.field
    if condition.equals is not None:
        expected = condition.equals
        return lambda m: expected in m.values(field)
    if condition.in_ is not None:
        allowed = frozenset(condition.in_)
        return lambda m: any(v in allowed for v in m.values(field))
    if condition.matches is not None:
        pattern = re.compile(condition.matches)
        return lambda m: any(pattern.search(v) for v in m.values(field))
    if condition.exists is not None:
        wanted = condition.exists
        return lambda m: bool(m.values(field)) is wanted
    if condition.not_ is not None:
        inner = compile_condition(condition.not_)
        return lambda m: not inner(m)
    if condition.any is not None:
        options = [compile_condition(c) for c in condition.any]
        return lambda m: any(p(m) for p in options)
    assert condition.all is not None
    return compile_conditions(condition.all)


def describe(conditions: Sequence[Condition]) -> str:
    """A one-line human reading of conditions, for 'filtered' reasons."""
    return " and ".join(_describe_one(c) for c in conditions) or "always"


def _describe_one(c: Condition) -> str:
    if c.equals is not None:
        return f"{c.field} = {c.equals!r}"
    if c.in_ is not None:
        return f"{c.field} in [{', '.join(c.in_)}]"
    if c.matches is not None:
        return f"{c.field} matches /{c.matches}/"
    if c.exists is not None:
        return f"{c.field} {'exists' if c.exists else 'is absent'}"
    if c.not_ is not None:
        return f"not ({_describe_one(c.not_)})"
    if c.any is not None:
        return "any of (" + "; ".join(_describe_one(x) for x in c.any) + ")"
    return "all of (" + "; ".join(_describe_one(x) for x in c.all or []) + ")"
