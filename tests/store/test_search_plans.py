"""Message searches read the messages table through the index their filter names, on a
store with enough rows for the planner to weigh its choices.

- A closed time window, through the received-time index: PostgreSQL walked the primary
  key back from the newest message instead, through every row after the window (7-13 s
  for a window a month old on a million messages).
- A type (MSH-9 ``T`` or ``T^...``) on PostgreSQL, through the message type index: an
  index in the database's collation (C.UTF-8 here, ICU or en_GB elsewhere) cannot serve
  ``LIKE 'T^%'``, so a rare type read the whole table. (SQLite, without the statistics of
  each value, still reads newest first for any type: see docs/operations.md.)
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection

from router.store.database import Store
from router.store.inbound import utcnow
from router.store.queries import MessageFilter, search, search_query
from router.store.schema import messages

ROWS = 20_000
START = utcnow().replace(microsecond=0) - timedelta(days=30)


@pytest.fixture
def filled(store: Store) -> Store:
    """``ROWS`` messages, one every two minutes for the last 30 days, over four channels; one
    in a thousand a scheduling message (SIU^S12), the rest results and admissions."""
    rows = [
        {
            "id": i,
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "channel": f"ch{i % 4}",
            "received_at": START + timedelta(minutes=2 * i),
            "status": "error" if i % 50 == 0 else "processed",
            "content_type": "application/hl7-v2",
            "message_type": "SIU^S12" if i % 1000 == 0 else ("ORU^R01", "ADT^A01")[i % 2],
            "control_id": f"MSG{i:09d}",
            "size": 4,
            "raw": b"MSH|",
        }
        for i in range(1, ROWS + 1)
    ]
    with store.begin() as conn:
        conn.execute(messages.insert(), rows)
        conn.exec_driver_sql("ANALYZE")
    return store


def _plan(conn: Connection, f: MessageFilter) -> list[str]:
    """The plan's steps that read the messages table: SQLite's lines, PostgreSQL's nodes
    as 'node type (index name): index condition'."""
    query = search_query(f, conn.dialect.name)
    if conn.dialect.name == "sqlite":
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}").all()
        return [row[-1] for row in plan if "messages" in row[-1]]
    compiled = query.compile(conn)
    found = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    plan = found if isinstance(found, list) else json.loads(found)
    steps: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "messages":
            index = node.get("Index Name", "")
            condition = node.get("Index Cond") or node.get("Recheck Cond", "")
            steps.append(f"{node['Node Type']} ({index}): {condition}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return steps


WINDOWS = {
    "a day a month ago": (timedelta(days=2), timedelta(days=3)),
    "the oldest five days": (timedelta(0), timedelta(days=5)),
}


@pytest.mark.parametrize("name", WINDOWS)
def test_a_closed_window_is_read_through_the_received_time_index(filled, name):
    since, until = (START + moment for moment in WINDOWS[name])
    f = MessageFilter(since=since, until=until)
    with filled.read() as conn:
        steps = _plan(conn, f)
        found = search(conn, f)
    assert steps and all("received_at" in step for step in steps), steps
    newest = int((until - START) / timedelta(minutes=2)) - 1
    assert [row["id"] for row in found] == list(range(newest, newest - 50, -1))


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("kind", ["SIU", "SIU^S12", "SIU^S1", "MFN", "S_U"])
def test_a_rare_type_is_read_through_the_message_type_index(filled, kind):
    f = MessageFilter(message_type=kind)
    with filled.read() as conn:
        steps = _plan(conn, f)
        found = search(conn, f)
    assert steps and all("message_type" in step for step in steps), steps
    expected = list(range(ROWS, ROWS - 20_000, -1_000)) if kind in ("SIU", "SIU^S12") else []
    assert [row["id"] for row in found] == expected
