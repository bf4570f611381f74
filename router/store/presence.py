"""Whether an engine runs against a store: ``run.py db restore`` must not replace a store
under a running engine, whose next write would go into the replaced one (or half of each).

- SQLite: every engine keeps its connections to the file open, in WAL mode, and SQLite lets
  a file leave WAL mode only when no other connection (of any process) has it open. So the
  test is to switch it to a rollback journal, which also checkpoints and removes its
  ``-wal``, as a file about to be replaced needs.
- PostgreSQL: each engine holds a shared session advisory lock named after the store (its
  schema) from start to stop; a restore takes it exclusively. A session lock ends with its
  session, so an engine killed with ``kill -9`` holds nothing.

Other ``run.py`` commands hold no lock: one running during a restore reads either store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from router.store.database import Store

_KEY = text("SELECT hashtextextended(current_schema() || '/engine', 0)")


class StoreInUse(Exception):
    """An engine runs against the store (or a restore of it is running)."""


@contextmanager
def engine_running(store: Store) -> Iterator[None]:
    """Held by an engine from its start to its stop (PostgreSQL; SQLite's own locks say)."""
    if store.is_sqlite:
        yield
        return
    conn = store.writer.connect()
    try:
        key = conn.scalar(_KEY)
        held = conn.scalar(text("SELECT pg_try_advisory_lock_shared(:k)"), {"k": key})
        conn.commit()
        if not held:
            raise StoreInUse(
                "a restore of this store is running (run.py db restore): start the engine "
                "once it has finished"
            )
        try:
            yield
        finally:
            _release_shared(conn, key)
    finally:
        conn.close()


def _release_shared(conn: Connection, key: int) -> None:
    """Give the engine lock back at the stop. A session the server ended meanwhile (a
    restart, an outage) holds no lock any more: nothing to give back, and the stop goes on."""
    try:
        conn.execute(text("SELECT pg_advisory_unlock_shared(:k)"), {"k": key})
        conn.commit()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise


@contextmanager
def held_postgres(conn: Connection) -> Iterator[None]:
    """Hold ``conn``'s store for a restore; StoreInUse when an engine runs against it. A
    schema that is not there yet has no engine."""
    key = conn.scalar(_KEY)
    if key is None:
        conn.rollback()
        yield
        return
    if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
        holders = conn.scalar(
            text(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND ((classid::bigint << 32) | objid::bigint) = :k"
            ),
            {"k": key},
        )
        conn.rollback()
        raise StoreInUse(
            f"an engine is running against this store ({holders} session(s) hold the "
            f"engine lock): stop every engine of the store first"
        )
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()


def take_sqlite(database: Path) -> None:
    """Make sure no connection has the SQLite file open, and leave it a single file (no
    ``-wal``); StoreInUse when one has it open. A file that is not there has no engine."""
    if not database.exists():
        return
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.OperationalError as exc:
        raise StoreInUse(
            f"{database} is open in another process (an engine, or a run.py command): "
            f"stop every engine of the store first ({exc})"
        ) from exc
    finally:
        conn.close()
