"""The driver-level insert writes what SQLAlchemy would: the store's searches compare the
text of SQLite times, so one written differently would sort and match wrongly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select, text

from router.store.fast_insert import insert_rows
from router.store.schema import UtcDateTime

TIMES = [
    datetime(2026, 11, 30, 19, 40, 1, 123456, tzinfo=UTC),
    datetime(2026, 11, 30, 19, 40, 1, tzinfo=UTC),  # no microseconds: still six digits
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a year of three digits
    datetime(2026, 7, 1, 9, 0, 0, 500, tzinfo=ZoneInfo("Europe/London")),  # summer time
    datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
]


@pytest.fixture
def table():
    engine = create_engine("sqlite://")
    metadata = MetaData()
    times = Table(
        "times", metadata, Column("id", Integer, primary_key=True), Column("at", UtcDateTime())
    )
    metadata.create_all(engine)
    yield engine, times
    engine.dispose()


@pytest.mark.parametrize("when", TIMES, ids=str)
def test_a_time_is_stored_as_sqlalchemy_stores_it(table, when: datetime) -> None:
    engine, times = table
    with engine.begin() as conn:
        conn.execute(times.insert(), {"id": 1, "at": when})  # SQLAlchemy's own binding
        insert_rows(conn, times, [{"id": 2, "at": when}])  # straight through the driver
        stored = dict(conn.execute(text("SELECT id, at FROM times")).all())
        read = conn.scalar(select(times.c.at).where(times.c.id == 2))
    assert stored[2] == stored[1]
    assert read == when


def test_a_naive_time_is_refused(table) -> None:
    engine, times = table
    with engine.begin() as conn, pytest.raises(ValueError, match="naive datetime"):
        insert_rows(conn, times, [{"id": 1, "at": datetime(2026, 11, 30, 12, 0)}])
