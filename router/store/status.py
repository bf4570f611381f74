"""What ``run.py db status`` reports: whether the store answers, its schema against this
code's, its size and its backlog, read without migrating or writing anything.

An operator at 3 a.m. asks these before starting, upgrading or restoring; every other
command migrates the store as it opens it, which is the last thing to do by surprise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.exc import InterfaceError, OperationalError

from router.store.database import Store
from router.store.migrate import Applied, alembic_config
from router.store.queues import pending_queues, unprocessed
from router.store.schema import messages

# What the schema is, against this code's migrations.
CURRENT, BEHIND, AHEAD = "current", "behind", "ahead"


@dataclass
class Backlog:
    """Work waiting: messages received but not processed, deliveries not yet sent."""

    unprocessed: int
    queued: int
    oldest_queued: datetime | None


@dataclass
class StoreStatus:
    reachable: bool
    error: str | None = None
    schema: str | None = None  # CURRENT, BEHIND or AHEAD
    revisions: list[str] = field(default_factory=list)  # the store's
    heads: list[str] = field(default_factory=list)  # this code's
    pending: list[Applied] = field(default_factory=list)  # what ``db upgrade`` would run
    unknown: list[str] = field(default_factory=list)  # a newer tie's migrations
    database_bytes: int | None = None
    blob_folder: str = ""
    blob_files: int = 0
    blob_bytes: int = 0
    messages: int | None = None
    oldest_message: datetime | None = None
    backlog: Backlog | None = None

    @property
    def exit_code(self) -> int:
        """0 up to date, 1 behind or ahead of this code, 2 unreachable."""
        if not self.reachable:
            return 2
        return 0 if self.schema == CURRENT else 1


def store_status(store: Store) -> StoreStatus:
    """The store's status; never raises for a store that cannot be reached."""
    status = StoreStatus(reachable=True, blob_folder=str(store.blobs.root))
    missing = _missing_sqlite_file(store)
    if missing:
        return StoreStatus(reachable=False, error=missing, blob_folder=status.blob_folder)
    try:
        with store.read() as conn:
            _schema(conn, store.url, status)
            status.database_bytes = _database_bytes(conn, store)
            if inspect(conn).has_table("messages"):
                status.messages = conn.scalar(select(func.count()).select_from(messages))
                status.oldest_message = conn.scalar(select(func.min(messages.c.received_at)))
            if status.schema == CURRENT:
                # Read through indexes the latest schema has (an older one may lack them).
                queues = pending_queues(conn)
                status.backlog = Backlog(
                    unprocessed=sum(unprocessed(conn).values()),
                    queued=sum(q.depth for q in queues),
                    oldest_queued=min((q.oldest for q in queues), default=None),
                )
    except (OperationalError, InterfaceError) as exc:  # the store did not answer
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        return StoreStatus(
            reachable=False,
            error=first[0] if first else type(exc).__name__,
            blob_folder=status.blob_folder,
        )
    status.blob_files, status.blob_bytes = _folder_size(store.blobs.root)
    return status


def _missing_sqlite_file(store: Store) -> str | None:
    """Opening a SQLite file that is not there would create an empty one: say so instead."""
    database = store.writer.url.database
    if store.is_sqlite and database and database != ":memory:" and not Path(database).exists():
        return f"no database file at {database}"
    return None


def _schema(conn: Connection, url: str, status: StoreStatus) -> None:
    script = ScriptDirectory.from_config(alembic_config(url))
    known = {s.revision: s for s in script.walk_revisions()}
    status.revisions = sorted(MigrationContext.configure(conn).get_current_heads())
    status.heads = sorted(script.get_heads())
    status.unknown = [r for r in status.revisions if r not in known]
    applied = {
        s.revision
        for r in status.revisions
        if r in known
        for s in script.iterate_revisions(r, "base")
    }
    status.pending = [
        Applied(s.revision, s.doc or "")
        for s in reversed(list(script.walk_revisions()))
        if s.revision not in applied
    ]
    status.schema = AHEAD if status.unknown else BEHIND if status.pending else CURRENT


def _database_bytes(conn: Connection, store: Store) -> int:
    """The SQLite file with its write-ahead log, or the tables and indexes of the store's
    schema on PostgreSQL (the database may hold others')."""
    if store.is_sqlite:
        database = Path(store.writer.url.database or "")
        return sum(
            Path(f"{database}{suffix}").stat().st_size
            for suffix in ("", "-wal")
            if Path(f"{database}{suffix}").exists()
        )
    size: Any = conn.scalar(
        text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')"
        )
    )
    return int(size)


def _folder_size(root: Path) -> tuple[int, int]:
    """Blob files under ``root`` and their bytes (temporary files of writes in hand aside)."""
    files = size = 0
    for folder, subfolders, names in os.walk(root):
        if Path(folder) == root:
            subfolders[:] = [s for s in subfolders if s != "tmp"]
        for name in names:
            try:
                size += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # discarded by retention as we walked
                continue
            files += 1
    return files, size
