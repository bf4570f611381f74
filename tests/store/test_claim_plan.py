"""A claim of an ordered destination reads each pending delivery of its queue a bounded
number of times, whatever the planner knows of the table: after a receiver's outage left
30,000 queued (never analysed), PostgreSQL planned the next-due query as a nested loop of
the queue by the queue and ran it for over 7 minutes at 100% CPU."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection

from router.store import deliveries as queue
from router.store.database import Store
from router.store.deliveries import claim
from router.store.inbound import utcnow
from router.store.schema import deliveries, messages

QUEUE = 2_000


def _fill(store: Store, keys: int) -> None:
    """``QUEUE`` queued deliveries of one destination over ``keys`` ordering keys, each key's
    head retrying an hour from now (the receiver is down), and no statistics of the table."""
    now = utcnow()
    later = now + timedelta(hours=1)
    common = {"channel": "lab-orders", "content_type": "application/hl7-v2"}
    with store.begin() as conn:
        if not store.is_sqlite:
            conn.exec_driver_sql("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
        conn.execute(
            messages.insert(),
            [
                {"id": i, "uuid": f"{i:036d}", "received_at": now, "status": "processed"}
                | {"size": 4, "raw": b"MSH|"}
                | common
                for i in range(1, QUEUE + 1)
            ],
        )
        conn.execute(
            deliveries.insert(),
            [
                {"id": i, "message_id": i, "destination": "lab", "ordering_key": f"K{i % keys}"}
                | {"status": "retrying" if i <= keys else "queued", "payload": b"MSH|"}
                | {"next_attempt_at": later, "created_at": now, "updated_at": now}
                | common
                for i in range(1, QUEUE + 1)
            ],
        )


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The claim's statements (as its driver runs them) with their parameters."""
    statements: list[tuple[str, dict[str, Any]]] = []
    rows = queue._Sql.rows

    def recording(sql: Any, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        statements.append((getattr(sql, conn.dialect.name), params))
        return rows(sql, conn, params)

    monkeypatch.setattr(queue._Sql, "rows", recording)
    yield statements


def _rows_read(conn: Connection, statement: str, params: dict[str, Any]) -> int:
    """How many deliveries rows (or index entries) the statement's run read, in all."""
    found = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", params).scalar()
    plan = found if isinstance(found, list) else json.loads(found)

    def read(node: dict[str, Any]) -> int:
        own = 0
        if node.get("Relation Name") == "deliveries":
            kept = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            own = kept * node["Actual Loops"]
        return own + sum(read(child) for child in node.get("Plans", []))

    return read(plan[0]["Plan"])


@pytest.mark.parametrize("keys", [1, 50])
def test_an_ordered_claim_reads_its_queue_a_bounded_number_of_times(store, seen, keys):
    _fill(store, keys)
    claimed = claim(
        store, "lab-orders", "lab", ordered=True, lanes=4, limit=40, lease=30, owner="node"
    )
    assert claimed.lanes == [] and claimed.next_due is not None
    assert len(seen) == 2, "the lanes' heads, then when the first falls due"
    with store.begin() as conn:  # the claim's statements lock what they read on PostgreSQL
        if store.is_sqlite:
            # The heads from the pending index, then each head's row by its id.
            plans = [
                [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {s}", p)]
                for s, p in seen
            ]
            assert not [s for plan in plans for s in plan if s.startswith("SCAN")], plans
            assert all("SEARCH d USING INTEGER PRIMARY KEY (rowid=?)" in p for p in plans), plans
            return
        reads = {statement: _rows_read(conn, statement, params) for statement, params in seen}
    assert max(reads.values()) <= 3 * QUEUE, list(reads.values())
