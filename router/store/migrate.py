"""Schema migrations with alembic, run by ``run.py db upgrade`` and on every engine start."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from router.store.database import Store

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x7469655F6D6967  # "tie_mig": one node migrates at a time on PostgreSQL


class SchemaTooNew(Exception):
    """The store was migrated by a newer tie, whose schema this code does not know: it must
    neither run on the store nor try to migrate it (alembic could only fail with a traceback)."""

    def __init__(self, unknown: list[str]) -> None:
        super().__init__(
            f"the store's schema is newer than this version of tie: it has migration(s) "
            f"{', '.join(unknown)}, which this version does not know. A newer tie upgraded "
            f"this store: run that version on every node, or restore the backup taken before "
            f"the upgrade. Nothing was changed."
        )


class Applied(NamedTuple):
    """One migration an upgrade ran: its revision and the first line of its docstring."""

    revision: str
    doc: str


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@cache
def _scripts() -> ScriptDirectory:
    """The migration scripts, read once a process: reading them runs every file in
    ``migrations/versions``, which cost each CLI command and engine start a tenth of a
    second or more even when there was nothing to migrate."""
    return ScriptDirectory(str(MIGRATIONS))


def _at_heads(store: Store, script: ScriptDirectory) -> bool:
    """Whether the store is at every head already: then there is nothing to migrate and no
    lock to wait for (a node migrating meanwhile moves the store on, never back)."""
    with store.writer.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
        conn.rollback()
    return current == set(script.get_heads())


def _refuse_newer(conn: Connection, script: ScriptDirectory) -> None:
    current = MigrationContext.configure(conn).get_current_heads()
    known = {s.revision for s in script.walk_revisions()}
    unknown = sorted(r for r in current if r not in known)
    if unknown:
        raise SchemaTooNew(unknown)


def _lock(conn: Connection) -> None:
    """Take the migration lock, saying so when another node holds it: a node or ``db
    upgrade`` waiting on another's migration would otherwise look hung."""
    if not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY}).scalar():
        log.info("waiting for another node to finish migrating the store")
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
    conn.commit()


def upgrade(store: Store, revision: str = "heads") -> list[Applied]:
    """Bring the schema to ``revision`` (every branch head by default); safe from several nodes.

    Returns the migrations it ran, in order (none when the store was up to date), so that
    an operator is told what an upgrade changed. Raises SchemaTooNew, changing nothing,
    when a newer tie has migrated the store."""
    script = _scripts()
    if revision == "heads" and _at_heads(store, script):
        return []
    config = alembic_config(store.url)
    applied: list[Applied] = []

    def record(*, step: MigrationInfo, **_: Any) -> None:
        if step.is_upgrade and step.up_revision is not None:
            applied.append(Applied(step.up_revision.revision, step.up_revision.doc or ""))

    with store.writer.connect() as conn:
        if store.dialect == "postgresql":
            _lock(conn)
        try:
            _refuse_newer(conn, script)
            conn.commit()  # the read above began a transaction; alembic begins its own
            config.attributes["connection"] = conn
            config.attributes["on_version_apply"] = record
            command.upgrade(config, revision)
            conn.commit()
        finally:
            if store.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()
    if applied:
        log.info(
            "store migrated: %d migration(s) applied: %s",
            len(applied),
            ", ".join(a.revision for a in applied),
        )
    return applied
