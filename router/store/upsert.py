"""INSERT ... ON CONFLICT DO UPDATE on either store.

An UPDATE that finds no row followed by an INSERT races a concurrent writer of the same
key on PostgreSQL (both find none, the second INSERT violates the key: a 500); one
upsert statement does not. PostgreSQL and SQLite (3.24+) both speak it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def upsert(conn: Connection, table: Table, values: dict[str, Any], key: tuple[str, ...]) -> None:
    """Insert ``values`` into ``table``, or update the row with the same ``key`` columns."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    changes = {name: value for name, value in values.items() if name not in key}
    statement = insert(table).values(**values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[table.c[name] for name in key], set_=changes
        )
    )
