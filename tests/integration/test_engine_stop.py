"""The engine's stop (SIGTERM) with the processor's batch and a dispatch round both stuck
behind a lock: each is cancelled after the stop grace, the two graces running side by side."""

from __future__ import annotations

import logging
import time

import pytest
from sqlalchemy import text
from tie_testing import RunningEngine, channel, engine_config, wait_until

from router.store.database import Store

GRACE = 1.0  # the engine's is 10 s


def _waiting_for_messages(store: Store) -> int:
    """How many statements wait for a lock on this store's ``messages`` table."""
    with store.read() as conn:
        return conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks "
                "WHERE NOT granted AND relation = 'messages'::regclass"
            )
        )


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: no cancel
def test_a_stop_cancels_a_stuck_batch_and_a_stuck_round_within_one_grace(
    tmp_path, store_url, caplog
):
    """Cancelled one after the other, each after its 10 s, a stop with ``messages`` locked
    took 20.5 s; side by side it takes one grace."""
    orders = channel(
        {
            "name": "orders",
            "source": {"mllp": {"host": "127.0.0.1", "port": 0}},
            "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": 9}}},
        }
    )
    running = RunningEngine(
        engine_config(tmp_path, store_url), {"orders": orders}, stop_grace=GRACE
    )
    blocker = running.store.writer.connect()
    try:
        blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        # The processor's claim and the dispatch worker's (which joins messages) both wait.
        wait_until(lambda: _waiting_for_messages(running.store) == 2)
        with caplog.at_level(logging.WARNING):
            started = time.monotonic()
            running.stop()
            took = time.monotonic() - started
    finally:
        blocker.rollback()
        blocker.close()
    cancelled = {r.name: r.created for r in caplog.records if "statement is cancelled" in r.message}
    assert sorted(cancelled) == ["router.dispatch", "router.processing"]
    # Side by side, both graces ran from the same moment and ended together; one after the
    # other, the processor's would have begun once the dispatcher's had ended.
    apart = abs(cancelled["router.processing"] - cancelled["router.dispatch"])
    assert apart < GRACE / 2, f"cancelled {apart:.1f} s apart; the stop took {took:.1f} s"
    assert took >= GRACE
