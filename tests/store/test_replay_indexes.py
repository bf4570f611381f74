"""A message's detail and a replay's dry run find copies by index, never by a scan of the
messages or deliveries table (SQLite's query plan of every statement they run; the same
indexes serve PostgreSQL). On a store of a million messages each scan cost seconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from store_testing import statements

from router import replay
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.migrate import upgrade
from router.store.queries import message_detail
from router.store.schema import deliveries, messages


@pytest.fixture
def linked(tmp_path: Any) -> Iterator[Store]:
    """A migrated SQLite store with a reprocessed message and a resent delivery."""
    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    upgrade(store)
    now = utcnow()
    message = {
        "channel": "lab-orders",
        "received_at": now,
        "status": "processed",
        "content_type": "application/hl7-v2",
        "size": 4,
        "raw": b"MSH|",
    }
    delivery = {
        "channel": "lab-orders",
        "destination": "lab",
        "content_type": "application/hl7-v2",
        "payload": b"MSH|",
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
    with store.begin() as conn:
        conn.execute(messages.insert().values(id=1, uuid="a" * 36, **message))
        conn.execute(messages.insert().values(id=2, uuid="b" * 36, reprocessed_from=1, **message))
        conn.execute(deliveries.insert().values(id=1, message_id=1, status="resent", **delivery))
        conn.execute(
            deliveries.insert().values(id=2, message_id=1, status="sent", resent_from=1, **delivery)
        )
    yield store
    store.dispose()


def _detail(store: Store) -> None:
    with store.read() as conn:
        assert message_detail(conn, 1) is not None


CASES: dict[str, Callable[[Store], Any]] = {
    "message detail": _detail,
    "reprocess dry run": lambda store: replay.plan_reprocess(store, [1]),
    "resend dry run": lambda store: replay.plan_resend(store, [1]),
}


def _scan(step: str) -> bool:
    """A step reading the whole table, or every row after one (an open range of ids)."""
    whole = step.startswith(("SCAN messages", "SCAN deliveries"))
    return whole or step.endswith("USING INTEGER PRIMARY KEY (rowid>?)")


@pytest.mark.parametrize("name", CASES)
def test_copies_are_found_by_index(linked, name):
    with statements(linked) as seen:
        CASES[name](linked)
    assert seen
    scans = []
    with linked.read() as conn:
        for statement, parameters in seen:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            steps = [row[-1] for row in plan]
            scans += [s for s in steps if _scan(s)]
    assert not scans, scans


BULK = 3_000


def _bulk(store: Store) -> None:
    """``BULK`` messages, each with a failed delivery."""
    now = utcnow()
    common = {"channel": "lab-orders", "content_type": "application/hl7-v2"}
    with store.begin() as conn:
        conn.execute(
            messages.insert(),
            [
                {"id": i, "uuid": f"{i:036d}", "received_at": now, "status": "processed"}
                | {"size": 4, "raw": b"MSH|"}
                | common
                for i in range(1, BULK + 1)
            ],
        )
        conn.execute(
            deliveries.insert(),
            [
                {"id": i, "message_id": i, "destination": "lab", "status": "failed"}
                | {"payload": b"MSH|", "next_attempt_at": now, "created_at": now}
                | {"updated_at": now}
                | common
                for i in range(1, BULK + 1)
            ],
        )


def test_a_bulk_dry_run_binds_its_ids_as_one_array_on_postgresql(store):
    """An IN list renders (and the driver binds) a placeholder an id: a 10,000-message dry
    run spent seconds of client CPU on that alone on PostgreSQL, where one array
    parameter (``= ANY(...)``) does; SQLite has no arrays and keeps IN, in parts."""
    _bulk(store)
    ids = list(range(1, BULK + 1))
    with statements(store) as seen:
        assert len(replay.plan_reprocess(store, ids)) == BULK
        assert len(replay.plan_resend(store, ids)) == BULK
    longest = max(len(statement) for statement, _ in seen)
    if store.is_sqlite:
        assert longest > BULK * len("?, "), "SQLite binds each id"
    else:
        assert longest < 1_000, "one array parameter, not a placeholder an id"
        arrays = [value for _, p in seen for value in (p or {}).values() if isinstance(value, list)]
        assert arrays and all(len(a) == BULK for a in arrays), "the ids as one array"
