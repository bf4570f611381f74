"""A search by correlation key and a message's timeline read the messages table by index
only, on a store with enough rows for the planner to weigh its choices (PostgreSQL read
the whole table, newest first, for ``id IN (...) OR control_id = ...``: 3 s on a million)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection
from store_testing import statements

from router.store.database import Store
from router.store.inbound import utcnow
from router.store.queries import MessageFilter, message_detail, search_query
from router.store.schema import correlations, messages

ROWS = 5_000


@pytest.fixture
def filled(store: Store) -> Store:
    """``ROWS`` messages, each with an order number shared with one other message."""
    start = utcnow() - timedelta(days=30)
    rows = [
        {
            "id": i,
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "channel": ("lab-orders", "lab-results")[i % 2],
            "received_at": start + timedelta(minutes=i),
            "status": "processed",
            "content_type": "application/hl7-v2",
            "control_id": f"MSG{i:09d}",
            "size": 4,
            "raw": b"MSH|",
        }
        for i in range(1, ROWS + 1)
    ]
    keys = [
        {"message_id": i, "key": "placer_order", "value": f"ORD{i // 2}"}
        for i in range(1, ROWS + 1)
    ]
    with store.begin() as conn:
        conn.execute(messages.insert(), rows)
        conn.execute(correlations.insert(), keys)
        conn.exec_driver_sql("ANALYZE")
    return store


def _unindexed_reads(conn: Connection, statement: str, parameters: Any) -> list[str]:
    """The plan's steps that read the messages table other than by an index condition."""
    if conn.dialect.name == "sqlite":
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
        return [row[-1] for row in plan if row[-1].startswith("SCAN messages")]
    found = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()
    plan = found if isinstance(found, list) else json.loads(found)
    bad: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "messages" and not (
            "Index Cond" in node or "Recheck Cond" in node
        ):
            bad.append(f"{node['Node Type']} on messages: {node.get('Filter', '')}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return bad


@pytest.mark.parametrize("key", ["ORD5000", "MSG000012345", "no-such-key"])
def test_a_key_search_reads_messages_by_index(filled, key):
    with filled.read() as conn:
        query = search_query(MessageFilter(key=key), conn.dialect.name)
        compiled = query.compile(conn)
        statement = str(compiled)
        parameters = compiled.params if conn.dialect.name != "sqlite" else None
        if conn.dialect.name == "sqlite":
            statement = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
        assert _unindexed_reads(conn, statement, parameters) == []


def test_a_detail_views_timeline_reads_messages_by_index(filled):
    with statements(filled) as seen, filled.read() as conn:
        assert message_detail(conn, 2_501) is not None
    with filled.read() as conn:
        reads = [r for s, p in seen for r in _unindexed_reads(conn, s, p)]
    assert reads == []
