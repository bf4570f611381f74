"""The dashboard (console ``/``, ``/api/channels``) reads each figure through an index, on a
store with enough rows for the planner to weigh its choices, and counts only the last 24
hours: counting "in total" read every message and delivery, and the newest error every
failing delivery, on each load (2-9 s at a million messages)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection
from store_testing import statements

from router.console.statistics import dashboard
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import deliveries, messages

ROWS = 20_000
CHANNELS = ["ch0", "ch1", "ch2", "ch3"]
# Partial indexes: what they hold is what is counted (waiting messages, pending deliveries).
PARTIAL = ("ix_messages_received_by_channel", "ix_messages_unprocessed", "ix_deliveries_pending")


@pytest.fixture
def filled(store: Store) -> Store:
    """``ROWS`` messages over 30 days up to now, one delivery each: sent, one in 100 failed
    and one in 100 retrying; one message in 50 an error; ch3's newest 40 waiting."""
    now = utcnow()
    start = now - timedelta(days=30)

    def at(i: int) -> Any:
        return start + (now - start) * i / (ROWS + 1)

    def status(i: int) -> str:
        if i % 50 == 0:
            return "error"
        return "received" if i > ROWS - 160 and i % 4 == 3 else "processed"

    message_rows = [
        {
            "id": i,
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "channel": CHANNELS[i % 4],
            "received_at": at(i),
            "status": status(i),
            "content_type": "application/hl7-v2",
            "size": 4,
            "raw": b"MSH|",
            "error": "bad PID" if i % 50 == 0 else None,
        }
        for i in range(1, ROWS + 1)
    ]
    delivery_rows = [
        {
            "id": i,
            "message_id": i,
            "channel": CHANNELS[i % 4],
            "destination": "lab",
            "status": "failed" if i % 100 == 1 else "retrying" if i % 100 == 2 else "sent",
            "content_type": "application/hl7-v2",
            "payload": b"MSH|",
            "next_attempt_at": at(i),
            "created_at": at(i),
            "updated_at": at(i),
            "last_error": f"refused {i}" if i % 100 in (1, 2) else None,
        }
        for i in range(1, ROWS + 1)
        if i % 50 and status(i) == "processed"
    ]
    with store.begin() as conn:
        conn.execute(messages.insert(), message_rows)
        conn.execute(deliveries.insert(), delivery_rows)
        conn.exec_driver_sql("ANALYZE")
    return store


def _unbounded_reads(conn: Connection, statement: str, parameters: Any) -> list[str]:
    """The plan's reads of messages or deliveries not bounded by an index condition (a scan of
    a partial index is bounded by what it holds)."""
    if conn.dialect.name == "sqlite":
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return [
            row[-1]
            for row in plan
            if row[-1].startswith(("SCAN messages", "SCAN deliveries"))
            and not any(index in row[-1] for index in PARTIAL)
        ]
    found = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()
    plan = found if isinstance(found, list) else json.loads(found)
    bad: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        bounded = "Index Cond" in node or "Recheck Cond" in node
        if node.get("Relation Name") in ("messages", "deliveries") and not (
            bounded or node.get("Index Name") in PARTIAL
        ):
            bad.append(f"{node['Node Type']} on {node['Relation Name']} {node.get('Index Name')}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return bad


def test_every_figure_is_read_through_an_index(filled):
    with statements(filled) as seen:
        assert len(dashboard(filled, CHANNELS)) == 4
    with filled.read() as conn:
        reads = [r for s, p in seen for r in _unbounded_reads(conn, s, p)]
    assert [s for s, _ in seen if "messages" in s] and reads == []


def test_counts_are_of_the_last_hour_and_day_and_failures_of_now(filled):
    rows = {row["channel"]: row for row in dashboard(filled, CHANNELS)}
    per_day = ROWS / 30
    for name, row in rows.items():
        day = row["counts"]["received"]["last_24h"]
        assert per_day / 4 - 2 <= day <= per_day / 4 + 2, (name, day)
        assert row["counts"]["received"]["last_hour"] in (6, 7)
    assert rows["ch1"]["failed"] == ROWS // 100
    assert rows["ch1"]["counts"]["failed"]["last_24h"] in (6, 7)
    assert rows["ch3"]["unprocessed"] == 40
    assert rows["ch2"]["queued"] == ROWS // 100
    assert rows["ch1"]["last_error"]["text"] == f"lab: refused {ROWS - 99}"
    assert rows["ch2"]["last_error"]["text"] == "bad PID", "newer than its retrying delivery"
    assert rows["ch3"]["last_error"] is None
    assert [(name, row["attention"]) for name, row in rows.items()] == [
        ("ch0", True),
        ("ch1", True),
        ("ch2", True),
        ("ch3", False),
    ]
