"""Numeric path, query and body parameters bounded to what the store's columns hold.

An id past the column's range is the caller's mistake, answered 422 with the reason,
rather than an overflow in the database driver answered 500.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

from router.store.queries import MAX_ID, MAX_NUMBER

IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
NumberPath = Annotated[int, Path(ge=1, le=MAX_NUMBER, description="a revision's number")]
NumberQuery = Annotated[int | None, Query(ge=1, le=MAX_NUMBER)]
Cursor = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="cursor: `next` of the last page")
]
BodyId = Annotated[int, Field(ge=1, le=MAX_ID)]
