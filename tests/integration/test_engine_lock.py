"""The engine lock on PostgreSQL outlives the session that held it: a server restart (here,
its backend terminated) must not let ``run.py db restore`` in under a running engine."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from tie_testing import RunningEngine, engine_config, wait_until

from router.config import ChannelConfig
from router.store.backup import back_up
from router.store.opening import open_store
from router.store.presence import StoreInUse, held_postgres
from router.store.restore import RestoreError, restore

pytestmark = pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
CHECK = 0.05  # the engine checks its lock this often (2 s in production)
_HOLDERS = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted "
    "AND ((classid::bigint << 32) | objid::bigint) = "
    "hashtextextended(current_schema() || '/engine', 0)"
)


def inbound() -> ChannelConfig:
    return ChannelConfig.model_validate(
        {"name": "inbound", "source": {"mllp": {"host": "127.0.0.1", "port": 0}}}
    )


@pytest.fixture
def running(tmp_path: Any, store_url: str) -> RunningEngine:
    """An engine checking its lock every CHECK seconds; each test ends it its own way."""
    return RunningEngine(
        engine_config(tmp_path, store_url), {"inbound": inbound()}, presence_check=CHECK
    )


@pytest.fixture
def admin(store_url: str) -> Iterator[Connection]:
    """A connection of the test's own to the store's schema, in autocommit."""
    engine = create_engine(store_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def holders(conn: Connection) -> set[int]:
    return set(conn.scalars(_HOLDERS))


def terminate(conn: Connection, pid: int) -> None:
    """End the session as a server restart would (for this engine's lock session only)."""
    conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})


def test_an_engine_whose_lock_session_ends_takes_the_lock_again(running, admin, caplog):
    caplog.set_level(logging.INFO, logger="router.presence_keeper")
    try:
        (first,) = holders(admin)
        terminate(admin, first)
        wait_until(lambda: holders(admin) - {first})
        with pytest.raises(StoreInUse, match="1 session"), held_postgres(admin):
            pass

        def said() -> list[str]:
            lines = [r.getMessage() for r in caplog.records if r.name == "router.presence_keeper"]
            return [line.split(" (")[0].split(":")[0] for line in lines]

        # The lock shows as held a moment before the keeper has marked the engine seen and
        # said so.
        wait_until(lambda: len(said()) >= 2)
        assert said() == [
            "the engine lost its engine lock",
            "the engine took its engine lock again",
        ]
    finally:
        running.stop()


def test_an_engine_stops_when_a_restore_took_the_lock_it_lost(running, admin, store_url, caplog):
    """The restore's exclusive lock, queued behind the engine's, is granted the moment the
    engine's session ends: the engine cannot take it back, and stops."""
    port = running.port("inbound")
    (pid,) = holders(admin)
    restore = create_engine(store_url)
    try:
        with restore.connect() as held:
            key = held.scalar(text("SELECT hashtextextended(current_schema() || '/engine', 0)"))
            taking = threading.Thread(
                target=held.execute, args=(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            )
            taking.start()
            wait_until(
                lambda: admin.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                )
            )
            terminate(admin, pid)
            taking.join(15)
            assert not taking.is_alive()
            with pytest.raises(
                StoreInUse, match="lost its engine lock: a restore of this store is running"
            ):
                running.run_until_stopped()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
            assert holders(admin) == set()
            assert any("stopping the engine" in r.getMessage() for r in caplog.records)
    finally:
        restore.dispose()


def test_an_engine_stops_when_a_restore_replaced_the_store_between_two_checks(
    tmp_path, store_url, admin
):
    """A restore quick enough to start and finish between two checks: the engine takes the
    lock again, sees the store is not the one it ran on, and stops."""
    config = engine_config(tmp_path, store_url)
    running = RunningEngine(config, {"inbound": inbound()}, presence_check=3600)  # checked here
    back_up(running.store, tmp_path / "backup")
    (pid,) = holders(admin)
    terminate(admin, pid)
    wait_until(lambda: holders(admin) == set())
    other = open_store(config)
    try:
        # The engine's sighting keeps it out (the test below): the operator overrides it.
        restore(other, tmp_path / "backup", actor="test", force=True, engines_stopped=True)
    finally:
        other.dispose()
    assert running.call(running.engine.presence.check()) is False
    assert holders(admin) == set()  # the session that found it replaced is not pooled
    with pytest.raises(StoreInUse, match="the store was replaced"):
        running.run_until_stopped()
    assert holders(admin) == set()


def test_a_restore_is_refused_while_an_engine_that_lost_its_lock_was_seen_lately(
    tmp_path, store_url, admin
):
    """The restore is quicker than the engine's next check: it gets the lock, but the
    engine's sighting (on the server's clock) names it, and nothing is changed."""
    config = engine_config(tmp_path, store_url)
    running = RunningEngine(config, {"inbound": inbound()}, presence_check=3600)  # no retake
    try:
        back_up(running.store, tmp_path / "backup")
        (pid,) = holders(admin)
        terminate(admin, pid)
        wait_until(lambda: holders(admin) == set())
        other = open_store(config)
        try:
            with pytest.raises(RestoreError) as refused:
                restore(other, tmp_path / "backup", actor="test", force=True)
        finally:
            other.dispose()
        said = str(refused.value)
        assert f"host {socket.gethostname()} pid {os.getpid()}, seen" in said
        assert "--engines-stopped" in said and "Nothing was changed" in said
        assert holders(admin) == set()  # the restore let go of the lock
        assert running.call(running.engine.presence.check()) is True  # same store: runs on
    finally:
        running.stop()


def fresh_sightings(conn: Connection) -> int:
    return int(
        conn.scalar(
            text(
                "SELECT count(*) FROM engine_presence "
                "WHERE seen_at + make_interval(secs => fresh_for) > now()"
            )
        )
    )


def test_each_check_marks_the_engine_seen_and_its_stop_forgets_it(tmp_path, store_url, admin):
    config = engine_config(tmp_path, store_url)
    running = RunningEngine(config, {"inbound": inbound()}, presence_check=3600)  # checked here
    try:
        admin.execute(text("UPDATE engine_presence SET seen_at = now() - interval '1 day'"))
        assert fresh_sightings(admin) == 0
        assert running.call(running.engine.presence.check()) is True
        assert fresh_sightings(admin) == 1
    finally:
        running.stop()
    assert admin.scalar(text("SELECT count(*) FROM engine_presence")) == 0
