"""Plain INSERTs straight through the driver, for the tables every message writes.

On the hot path (messages at ingest; deliveries and correlation keys at processing;
attempts at dispatch) SQLAlchemy's execution of an insert (bind processing, context
and result set-up) costs more than the driver's insert itself. The SQL is a plain
``INSERT`` (on PostgreSQL, several rows as one ``INSERT ... SELECT`` from arrays); what
SQLAlchemy would add is done here only where it matters: SQLite keeps ``UtcDateTime`` as
text in SQLAlchemy's format, and a naive datetime is refused as the type refuses it.
Anything else (another dialect, a column with a Python-side default, a type that
converts its values) goes through SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Dialect,
    Enum,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from router.store.schema import UtcDateTime

_PLACEHOLDER = {"sqlite": ":{}", "postgresql": "%({})s"}
# Types whose values the drivers bind exactly as SQLAlchemy would hand them over.
_PLAIN = (String, Text, Integer, LargeBinary, Float, Boolean, UtcDateTime)
# (table, dialect, keys) -> how to insert, or None where SQLAlchemy must insert.
_PLANS: dict[tuple[str, str, tuple[str, ...]], _Plan | None] = {}
_UNPLANNED = object()
_SQLITE_TIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # SQLAlchemy's DATETIME storage format


@dataclass(frozen=True, slots=True)
class _Plan:
    """One table's insert for one set of keys.

    ``batch_sql`` (PostgreSQL only) inserts many rows in one statement from one array per
    column, sent in binary: psycopg's ``executemany`` pipelines a statement per row and
    spent half as much client CPU again on a batch of eight messages (and its pipeline is
    a round trip more than one ``execute``).
    """

    sql: str
    times: tuple[str, ...]
    batch_sql: str | None


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> int | None:
    """Insert ``rows`` (dicts with the same keys) into ``table`` in ``conn``'s transaction.

    The id of the row when a single row went in on SQLite, which the driver tells without
    a query (a sender on one connection commits one message at a time); otherwise None.
    """
    if not rows:
        return None
    dialect = conn.dialect.name
    keys = tuple(rows[0])
    plan = _PLANS.get((table.name, dialect, keys), _UNPLANNED)
    if plan is _UNPLANNED:
        plan = _PLANS[(table.name, dialect, keys)] = _plan(table, conn.dialect, keys)
    if plan is None:
        conn.execute(table.insert(), rows)
        return None
    sql, times = plan.sql, plan.times
    driver = conn.connection.driver_connection
    if dialect == "sqlite":
        if times:
            texts: dict[datetime, str] = {}
            rows = [_with_text_times(row, times, texts) for row in rows]
        if len(rows) == 1:
            return driver.execute(sql, rows[0]).lastrowid
        driver.executemany(sql, rows)
        return None
    for row in rows:
        for key in times:
            _check_aware(row[key])
    with driver.cursor() as cursor:
        if len(rows) == 1:
            cursor.execute(sql, rows[0])
        else:
            assert plan.batch_sql is not None  # planned for PostgreSQL
            cursor.execute(plan.batch_sql, [[row[k] for row in rows] for k in keys])
    return None


def _plan(table: Table, dialect: Dialect, keys: tuple[str, ...]) -> _Plan | None:
    if dialect.name not in _PLACEHOLDER or any(k not in table.c for k in keys):
        return None
    if any(c.default is not None and c.name not in keys for c in table.c):
        return None
    types = [table.c[k].type for k in keys]
    if not all(isinstance(t, _PLAIN) and not isinstance(t, Enum) for t in types):
        return None
    names = dialect.identifier_preparer
    into = f"INSERT INTO {names.format_table(table)} ({', '.join(names.quote(k) for k in keys)})"
    marks = ", ".join(_PLACEHOLDER[dialect.name].format(k) for k in keys)
    batch_sql = None
    if dialect.name == "postgresql":
        # Text arrays for strings: an explicit cast to VARCHAR(n) would cut a longer value,
        # where the INSERT's own assignment refuses it, as a row-by-row insert does.
        arrays = ", ".join(
            f"%b::{'TEXT' if isinstance(t, String) else t.compile(dialect=dialect)}[]"
            for t in types
        )
        batch_sql = f"{into} SELECT * FROM unnest({arrays})"
    return _Plan(
        sql=f"{into} VALUES ({marks})",
        times=tuple(k for k in keys if isinstance(table.c[k].type, UtcDateTime)),
        batch_sql=batch_sql,
    )


def driver_time(dialect: str, value: datetime | None) -> datetime | str | None:
    """A ``UtcDateTime`` value as the driver takes it: on SQLite, text in SQLAlchemy's format."""
    if dialect != "sqlite" or value is None:
        _check_aware(value)
        return value
    return _sqlite_text(value)


def _sqlite_text(value: datetime) -> str:
    """SQLAlchemy's SQLite text for a UTC time, formatted directly: ``isoformat`` with its
    arguments took three times as long, a few times for every message."""
    _check_aware(value)
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return _SQLITE_TIME % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


def _with_text_times(
    row: dict[str, Any], times: tuple[str, ...], texts: dict[datetime, str]
) -> dict[str, Any]:
    """``row`` with its times as SQLite text; ``texts`` keeps each distinct time's text, since
    the rows of one insert mostly share one ``now`` (several columns, every row)."""
    out = dict(row)
    for key in times:
        value = out[key]
        if value is None:
            continue
        text = texts.get(value)
        if text is None:
            text = texts[value] = _sqlite_text(value)
        out[key] = text
    return out


def _check_aware(value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
