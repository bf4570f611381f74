"""Numeric and time parameters (path, query, body) bounded to what the store's columns hold.

An id past the column's range, or a time whose UTC falls outside the years 1 to 9999, is
the caller's mistake, answered 422 with the reason, rather than an overflow in the
database driver or in the conversion to UTC answered 500. A time is ISO 8601 text: a
number is refused rather than read as Unix seconds (pydantic's default), which would turn
ISO 8601's basic form ``20261122`` silently into a day in 1970.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BeforeValidator, Field

from router.store.queries import MAX_ID, MAX_NUMBER

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
NumberPath = Annotated[int, Path(ge=1, le=MAX_NUMBER, description="a revision's number")]
NumberQuery = Annotated[int | None, Query(ge=1, le=MAX_NUMBER)]
Cursor = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="cursor: `next` of the last page")
]
BodyId = Annotated[int, Field(ge=1, le=MAX_ID)]


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(value: Any) -> Any:
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("a time is ISO 8601 text, such as 2026-11-22T09:00:00Z, not a number")
    return value


def _utc(moment: datetime) -> datetime:
    """UTC, as the store keeps times: a time without a zone is UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("in UTC this time is outside the years 1 to 9999") from None


Moment = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_utc)]
MomentQuery = Annotated[Moment | None, Query(description="ISO 8601; UTC when no zone is given")]
