"""The driver-level insert writes what SQLAlchemy would: the store's searches compare the
text of SQLite times, so one written differently would sort and match wrongly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import psycopg
import pytest
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    select,
    text,
)

from router.store.fast_insert import insert_rows
from router.store.schema import ByteCount, Id, UtcDateTime

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


ROWS = [
    {
        "code": "AA",
        "note": "a\x00b",  # PostgreSQL text cannot hold NUL: stored as U+FFFD, as ever
        "size": 2**40,
        "ms": 1.5,
        "ok": True,
        "body": b"\x0bMSH|\x00\x1c\r",
        "at": TIMES[0],
        "spare": None,
    },
    {
        "code": "",
        "note": None,
        "size": 7,
        "ms": 0.0,
        "ok": False,
        "body": b"",
        "at": TIMES[3],
        "spare": None,
    },
    {
        "code": "AE",
        "note": "Zoë's ACK",
        "size": 0,
        "ms": -2.25,
        "ok": None,
        "body": b"x" * 5000,
        "at": TIMES[4],
        "spare": None,
    },
]


def _twins(store) -> tuple[Table, Table]:
    """Two tables alike with every kind of column the fast path writes."""
    metadata = MetaData()

    def table(name: str) -> Table:
        return Table(
            name,
            metadata,
            Column("id", Id, primary_key=True, autoincrement=True),
            Column("code", String(8), nullable=False),
            Column("note", Text),
            Column("size", ByteCount, nullable=False),
            Column("ms", Float, nullable=False),
            Column("ok", Boolean),
            Column("body", LargeBinary, nullable=False),
            Column("at", UtcDateTime(), nullable=False),
            Column("spare", Integer),
        )

    pair = table("fast_rows"), table("orm_rows")
    metadata.create_all(store.writer)
    return pair


def test_a_batch_is_stored_as_sqlalchemy_stores_it(store) -> None:
    fast, orm = _twins(store)
    with store.begin() as conn:
        insert_rows(conn, fast, ROWS)  # several rows: one statement of arrays on PostgreSQL
        conn.execute(orm.insert(), ROWS)
    with store.read() as conn:
        written = [conn.execute(select(t).order_by(t.c.id)).all() for t in (fast, orm)]
    assert written[0] == written[1]
    assert [row.body for row in written[0]] == [r["body"] for r in ROWS]
    assert [row.at for row in written[0]] == [r["at"] for r in ROWS]


def test_a_value_too_long_for_its_column_is_never_cut(store) -> None:
    fast, _ = _twins(store)
    long_code = {**ROWS[1], "code": "X" * 9}  # String(8)
    if store.is_sqlite:  # SQLite keeps any length
        with store.begin() as conn:
            insert_rows(conn, fast, [ROWS[0], long_code])
        with store.read() as conn:
            assert conn.scalars(select(fast.c.code).order_by(fast.c.id)).all()[1] == "X" * 9
        return
    with pytest.raises(psycopg.DataError, match="too long"), store.begin() as conn:
        insert_rows(conn, fast, [ROWS[0], long_code])
