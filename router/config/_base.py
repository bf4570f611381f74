"""Shared pieces of the configuration models: strictness, units, field paths, mapping refs."""

from __future__ import annotations

import re
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from router.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
# A timeout, wait or interval of 0 cannot work: it closes every connection at once, gives up
# on every answer (while the receiver still takes each message) or spins a loop.
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(parse_size)]
CHANNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAPPING_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# A delivery's own fields, which every outgoing template (HTTP header, MESH, SMTP) can name.
DELIVERY_FIELDS = (
    "channel",
    "destination",
    "message_id",
    "message_uuid",
    "delivery_id",
    "idempotency_key",
)
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_field_path(value: str | None) -> str | None:
    # Anything but text is left to the type check (a union may accept it as a list of paths).
    if isinstance(value, str):
        from router.field_paths import check_field_path

        check_field_path(value)
    return value


def _check_mapping_ref(value: str | None) -> str | None:
    if value is not None and not MAPPING_REF.match(value):
        raise ValueError(f"{value!r} is not 'module:function' (e.g. pathology:normalise_order)")
    return value


FieldPath = Annotated[str, BeforeValidator(_check_field_path)]
MappingRef = Annotated[str, BeforeValidator(_check_mapping_ref)]


def _require_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    present = [n for n in names if getattr(model, n) is not None]
    if len(present) != 1:
        found = f" (found {', '.join(present)})" if present else ""
        raise ValueError(f"a {what} needs exactly one of {', '.join(names)}{found}")
