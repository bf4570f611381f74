"""Schema migrations with alembic, run by ``run.py db upgrade`` and on every engine start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from router.store.database import Store

MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x7469655F6D6967  # "tie_mig": one node migrates at a time on PostgreSQL


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(store: Store, revision: str = "heads") -> None:
    """Bring the schema to ``revision`` (every branch head by default); safe from several nodes."""
    config = alembic_config(store.url)
    with store.writer.connect() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            conn.commit()
        try:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
        finally:
            if store.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
                conn.commit()
