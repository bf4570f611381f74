"""The common message searches are served by an index, never a scan of the messages table
(SQLite's query plan; the same indexes serve PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from router.store.database import Store
from router.store.migrate import upgrade
from router.store.queries import MessageFilter, search, search_query

COMMON = {
    "status": MessageFilter(status="error"),
    "status, next page": MessageFilter(status="error", before_id=1000),
    "channel": MessageFilter(channel="lab-orders"),
    "channel and status": MessageFilter(channel="lab-orders", status="error"),
    "control id": MessageFilter(control_id="MSG00001"),
    "correlation key": MessageFilter(key="PLACER-1"),
}


# A content search reads only its time window (the last day unless told): the window, not
# the newest-first order, must choose the index, or no match means every row read.
TEXT = {
    "text, last day": MessageFilter(text="PID|1||943"),
    "text and channel, last day": MessageFilter(text="PID|1||943", channel="lab-orders"),
    "text since a time": MessageFilter(text="PID|1||943", since=datetime(2026, 5, 1, tzinfo=UTC)),
}


def _plan(tmp_path: Path, f: MessageFilter) -> list[str]:
    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    try:
        upgrade(store)
        with store.read() as conn:
            query = search_query(f, "sqlite").compile(conn, compile_kwargs={"literal_binds": True})
            return [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {query}"))]
    finally:
        store.dispose()


@pytest.mark.parametrize("name", COMMON)
def test_common_filters_use_an_index(tmp_path, name):
    plan = _plan(tmp_path, COMMON[name])
    assert not [step for step in plan if step.startswith("SCAN messages")], plan


@pytest.mark.parametrize("name", TEXT)
def test_a_content_search_runs_with_bound_parameters(tmp_path, name):
    """The hint's argument is a constant in the SQL: SQLite refuses a bound one."""
    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    try:
        upgrade(store)
        with store.read() as conn:
            assert search(conn, TEXT[name]) == []
    finally:
        store.dispose()


@pytest.mark.parametrize("name", TEXT)
def test_a_content_search_reads_its_time_window(tmp_path, name):
    plan = _plan(tmp_path, TEXT[name])
    assert [step for step in plan if "ix_messages_received_at (received_at>?)" in step], plan
