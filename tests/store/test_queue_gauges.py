"""The queue gauges of ``/metrics``: each destination's depth and the age of its oldest
pending delivery, read from the pending index and one row per destination, not from the
row of every queued delivery (1.9 s a scrape on PostgreSQL with ~16k queued); and its
deliveries failed for good, from the index of failed deliveries (not every delivery)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Connection, select
from store_testing import statements

from router.metrics import REGISTRY, CertificateCollector, ChannelCollector, QueueCollector
from router.replay import resend
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import deliveries, messages

PENDING_ROWS = 3_000
SENT_ROWS = 20_000
FAILED_ROWS = 600


def _fill(store: Store, statuses: list[tuple[str, str, str, datetime]]) -> None:
    """One message and one delivery per (channel, destination, status, created_at), numbered
    by the store in the order given, as every path that creates a delivery has them."""
    message_rows = [
        {
            "id": i,
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "channel": channel,
            "received_at": at,
            "status": "processed",
            "content_type": "application/hl7-v2",
            "size": 4,
            "raw": b"MSH|",
        }
        for i, (channel, _, _, at) in enumerate(statuses, 1)
    ]
    delivery_rows = [
        {
            "message_id": i,
            "channel": channel,
            "destination": destination,
            "status": status,
            "content_type": "application/hl7-v2",
            "payload": b"MSH|" * 50,
            "ordering_key": f"P{i % 7}",
            "attempts": 0,
            "next_attempt_at": at,
            "created_at": at,
            "updated_at": at,
        }
        for i, (channel, destination, status, at) in enumerate(statuses, 1)
    ]
    with store.begin() as conn:
        for start in range(0, len(message_rows), 5_000):
            conn.execute(messages.insert(), message_rows[start : start + 5_000])
            conn.execute(deliveries.insert(), delivery_rows[start : start + 5_000])
        conn.exec_driver_sql("ANALYZE")


def _gauges(store: Store) -> dict[tuple[str, str, str], float]:
    return {
        (s.name, s.labels["channel"], s.labels["destination"]): s.value
        for family in QueueCollector(store).collect()
        for s in family.samples
        if s.name.startswith("tie_queue_") or s.name == "tie_failed_deliveries"
    }


START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def queued(store: Store) -> Store:
    """``SENT_ROWS`` sent deliveries, ``FAILED_ROWS`` failed, then ``PENDING_ROWS`` pending,
    over 2 x 3 destinations, one a second from ``START``."""
    start = START
    rows = []
    for i in range(-FAILED_ROWS, SENT_ROWS + PENDING_ROWS):
        if i < 0:
            status = "failed"
        else:
            status = "sent" if i < SENT_ROWS else ("queued", "retrying", "sending")[i % 3]
        rows.append((f"ch{i % 2}", f"dest{i % 3}", status, start + timedelta(seconds=i)))
    _fill(store, rows)
    return store


# The partial indexes the gauges scan, each of a few rows of the table.
SCANNED = ("ix_deliveries_pending", "ix_deliveries_failed")


def _table_reads(conn: Connection, statement: str, parameters: Any) -> list[str]:
    """The plan's reads of deliveries rows other than one by primary key a destination."""
    if conn.dialect.name == "sqlite":
        plan = [
            row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        ]
        bad = [
            step
            for step in plan
            if "deliveries" in step
            and step not in {f"SCAN deliveries USING INDEX {index}" for index in SCANNED}
            and "USING INTEGER PRIMARY KEY" not in step
        ]
        # A partial index's scan leaves the table cursor at a deferred seek, taken only
        # if a column of the row is read: no Column op may read that cursor.
        program = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        deferred = {row[4] for row in program if row[1] == "DeferredSeek"}
        bad += [
            f"Column {row[3]} of the row"
            for row in program
            if row[1] == "Column" and row[2] in deferred
        ]
        return bad
    # Whether PostgreSQL skips the table in an index-only scan is decided at run time, page by
    # page, by the visibility map (which any long transaction on the server holds back):
    # with the table's other paths priced out, the plan shows whether the query needs any
    # column outside the index (the row's created_at made it an Index Scan, a heap read each).
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
    found = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters).scalar()
    plan = found if isinstance(found, list) else json.loads(found)
    bad: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "deliveries":
            index_only = node["Node Type"] == "Index Only Scan"
            by_key = node["Node Type"] == "Index Scan" and node.get("Index Name") == "pk_deliveries"
            if not (index_only or by_key):
                bad.append(f"{node['Node Type']} on deliveries {node.get('Index Name', '')}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return bad


def test_the_queue_gauges_read_no_row_per_pending_delivery(queued):
    with statements(queued) as seen:
        assert len(_gauges(queued)) == 18
    with queued.read() as conn:
        reads = [r for s, p in seen if "deliveries" in s for r in _table_reads(conn, s, p)]
    assert [s for s, _ in seen if "deliveries" in s] and reads == []


def test_the_queue_gauges_report_each_destinations_depth_oldest_age_and_failed(queued):
    before = utcnow()
    gauges = _gauges(queued)
    after = utcnow()
    for channel, destination in [(f"ch{c}", f"dest{d}") for c in range(2) for d in range(3)]:
        ids = [i for i in range(SENT_ROWS, SENT_ROWS + PENDING_ROWS) if f"ch{i % 2}" == channel]
        ids = [i for i in ids if f"dest{i % 3}" == destination]
        assert gauges[("tie_queue_depth", channel, destination)] == len(ids)
        oldest = START + timedelta(seconds=ids[0])
        age = gauges[("tie_queue_oldest_age_seconds", channel, destination)]
        assert (before - oldest).total_seconds() - 1 <= age <= (after - oldest).total_seconds() + 1
        assert gauges[("tie_failed_deliveries", channel, destination)] == FAILED_ROWS / 6


def test_held_and_finished_deliveries_are_not_queued_and_a_resend_is_as_old_as_itself(store):
    """A held delivery (lowest id) and sent or failed ones do not count; a failed delivery
    resent is queued anew, aged from its resend, not from the original's creation, and no
    longer counts as failed (it is ``resent``)."""
    _fill(
        store,
        [
            ("lab", "ris", "held", START),
            ("lab", "ris", "failed", START + timedelta(hours=1)),
            ("lab", "ris", "sent", START + timedelta(hours=2)),
            ("lab", "ris", "retrying", START + timedelta(hours=3)),
            ("lab", "ris", "queued", START + timedelta(hours=4)),
            ("lab", "pas", "failed", START + timedelta(hours=5)),
        ],
    )
    gauges = _gauges(store)
    assert gauges[("tie_queue_depth", "lab", "ris")] == 2
    age = gauges[("tie_queue_oldest_age_seconds", "lab", "ris")]
    assert abs(age - (utcnow() - START - timedelta(hours=3)).total_seconds()) < 5
    assert ("tie_queue_depth", "lab", "pas") not in gauges
    assert gauges[("tie_failed_deliveries", "lab", "ris")] == 1
    assert gauges[("tie_failed_deliveries", "lab", "pas")] == 1

    resent_at = utcnow()
    with store.read() as conn:
        failed = conn.scalar(select(deliveries.c.id).where(deliveries.c.destination == "pas"))
    resend(store, failed, reason="peer fixed", actor="ops")
    gauges = _gauges(store)
    assert gauges[("tie_queue_depth", "lab", "pas")] == 1
    assert ("tie_failed_deliveries", "lab", "pas") not in gauges
    assert gauges[("tie_failed_deliveries", "lab", "ris")] == 1
    assert (
        0
        <= gauges[("tie_queue_oldest_age_seconds", "lab", "pas")]
        <= (utcnow() - resent_at).total_seconds()
    )


def test_the_backlog_gauge_reads_the_index_of_unprocessed_messages(store):
    """``tie_unprocessed_messages`` counts the ``received`` messages from a partial index: a
    bound status hid the index's condition from SQLite, which then read a covering index
    of every message instead."""
    _fill(
        store, [(f"ch{i % 8}", "d", "sent", START + timedelta(seconds=i)) for i in range(SENT_ROWS)]
    )
    with store.begin() as conn:
        waiting = (messages.c.channel == "ch3") & (messages.c.id > SENT_ROWS - 800)
        conn.execute(messages.update().where(waiting).values(status="received"))
        conn.exec_driver_sql("ANALYZE")
    with statements(store) as seen:
        gauges = {
            s.labels["channel"]: s.value
            for family in QueueCollector(store).collect()
            for s in family.samples
            if s.name == "tie_unprocessed_messages"
        }
    assert gauges == {"ch3": 100}
    ((statement, parameters),) = [(s, p) for s, p in seen if "FROM messages" in s]
    with store.read() as conn:
        if conn.dialect.name == "sqlite":
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            used = " ".join(row[-1] for row in plan)
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            used = "\n".join(
                row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            )
    assert "ix_messages_unprocessed" in used or "ix_messages_received_by_channel" in used, used


def test_every_metric_the_example_alert_rules_use_is_one_the_engine_exposes(store):
    """examples/prometheus/tie-alerts.yml is meant to be used as is: a renamed metric would
    leave an alert that never fires."""
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    collectors = (
        QueueCollector(store),
        ChannelCollector(lambda: {}),
        CertificateCollector(lambda: []),
    )
    families = [*REGISTRY.collect(), *(f for c in collectors for f in c.collect())]
    exposed = {f.name + suffix for f in families for suffix in suffixes}
    rules = Path(__file__).parents[2] / "examples/prometheus/tie-alerts.yml"
    (group,) = yaml.safe_load(rules.read_text())["groups"]
    used = {name for rule in group["rules"] for name in re.findall(r"\btie_\w+", rule["expr"])}
    assert {
        "tie_queue_depth",
        "tie_failed_deliveries",
        "tie_tls_certificate_expiry_timestamp_seconds",
        "tie_tls_ca_bundle_trust_end_timestamp_seconds",
        "tie_tls_crl_next_update_timestamp_seconds",
        "tie_mesh_poll_failures_total",
        "tie_dps_jobs_overdue",
        "tie_channel_up",
        "tie_channel_revision_fallback",
    } <= used
    assert used - exposed == set()
