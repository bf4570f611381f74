"""The engine lock on PostgreSQL: engines share it, a restore takes it alone; the rows of
engines gone do not stay for ever."""

from __future__ import annotations

import socket
import subprocess
import sys
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, text

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


def _gone_pid() -> int:
    """The pid of a process of this host that has ended."""
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    return ended.pid


def test_rows_of_engines_gone_long_ago_are_pruned_and_a_stop_removes_its_own(store):
    """Killed engines leave their rows. PostgreSQL: the lock check (every 2 s) deletes those
    not seen for a day, far beyond the seconds a sighting keeps a restore out. SQLite, whose
    rows are not refreshed: the start deletes those of this host's ended processes."""
    now = datetime.now(UTC)
    rows = {
        "long-gone": ("node-a", 4242, now - timedelta(days=2)),
        "other-node": ("node-b", 4343, now),
        "killed-here": (socket.gethostname(), _gone_pid(), now),
    }
    with store.begin() as conn:
        for key, (host, pid, seen) in rows.items():
            conn.execute(
                insert(engine_presence).values(
                    id=key, host=host, pid=pid, started_at=seen, seen_at=seen, fresh_for=6.0
                )
            )
    with engine_running(store) as lock:
        assert lock.held()  # a lock check: the keeper's, on PostgreSQL
        with store.read() as conn:
            left = set(conn.scalars(select(engine_presence.c.id)))
    with store.read() as conn:
        after = set(conn.scalars(select(engine_presence.c.id)))

    kept = {"long-gone", "other-node"} if store.is_sqlite else {"other-node", "killed-here"}
    own = left - rows.keys()
    assert len(own) == 1  # this engine's, gone at its stop
    assert (left, after) == (kept | own, kept)
