"""The engine lock on PostgreSQL: engines share it, a restore takes it alone."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from sqlalchemy import insert, text

from router.store.database import Store
from router.store.presence import StoreInUse, engine_running, held_postgres
from router.store.schema import engine_presence


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: its own locks
def test_engines_share_the_store_and_a_restore_excludes_them(store_url, store):
    other = Store(store_url)
    with ExitStack() as cleanup:
        cleanup.callback(other.dispose)
        conn = cleanup.enter_context(store.writer.connect())
        with (
            engine_running(store),
            engine_running(other),  # two nodes
            pytest.raises(StoreInUse, match="2 session"),
            held_postgres(conn),
        ):
            pass
        with (
            held_postgres(conn),
            pytest.raises(StoreInUse, match="a restore of this store is running"),
            engine_running(other),
        ):
            pass
        with engine_running(other):  # the restore let go
            pass


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_restore_is_kept_out_by_a_fresh_sighting_not_a_stale_one(store):
    """An engine's row with no lock held: its session ended, it has not taken it again."""
    with store.begin() as conn:
        conn.execute(
            insert(engine_presence).values(
                id="a" * 32,
                host="node-a",
                pid=4242,
                started_at=text("now()"),
                seen_at=text("now() - interval '1 day'"),  # killed long ago
                fresh_for=6.0,
            )
        )
    with store.writer.connect() as conn:
        with held_postgres(conn):
            pass
        with store.begin() as seeing:
            seeing.execute(text("UPDATE engine_presence SET seen_at = now()"))
        with pytest.raises(StoreInUse, match=r"host node-a pid 4242, seen \d"), held_postgres(conn):
            pass
        with held_postgres(conn, engines_stopped=True):  # the operator knows better
            pass
