"""The common message searches are served by an index, never a scan of the messages table
(SQLite's query plan; the same indexes serve PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from router.store.database import Store
from router.store.migrate import upgrade
from router.store.queries import MessageFilter, search_query

COMMON = {
    "status": MessageFilter(status="error"),
    "status, next page": MessageFilter(status="error", before_id=1000),
    "channel": MessageFilter(channel="lab-orders"),
    "channel and status": MessageFilter(channel="lab-orders", status="error"),
    "control id": MessageFilter(control_id="MSG00001"),
    "correlation key": MessageFilter(key="PLACER-1"),
}


@pytest.mark.parametrize("name", COMMON)
def test_common_filters_use_an_index(tmp_path, name):
    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    try:
        upgrade(store)
        with store.read() as conn:
            query = search_query(COMMON[name], "sqlite").compile(
                conn, compile_kwargs={"literal_binds": True}
            )
            plan = [row[-1] for row in conn.execute(text(f"EXPLAIN QUERY PLAN {query}"))]
    finally:
        store.dispose()
    assert not [step for step in plan if step.startswith("SCAN messages")], plan
