"""Retention: finished messages older than their channel keeps them go, with all that is
theirs, after an archive when asked; unfinished and failed work never goes."""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from router import audit
from router.config import ChannelConfig
from router.connectors.hl7_inbound import hl7_inbound
from router.hl7v2.header import parse_header
from router.pipeline import compile_channel
from router.processing import Processor
from router.retention import Pruner
from router.store.blobs import BlobStore
from router.store.database import Store
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.migrate import upgrade
from router.store.schema import (
    attempts,
    audit_events,
    correlations,
    deliveries,
    hold_approvals,
    hold_batches,
    jobs,
    message_flags,
    messages,
    metadata,
    service_requests,
)

LAB = {"host": "127.0.0.1", "port": 2576}
OLD = timedelta(days=40)
m, d = messages.c, deliveries.c


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    """A migrated store whose blobs live in the test's folder, with a 1 KiB threshold."""
    s = Store(store_url, blobs=BlobStore(tmp_path / "blobs", threshold=1024))
    upgrade(s)
    yield s
    s.dispose()


def orders(**retention: Any) -> ChannelConfig:
    return ChannelConfig.model_validate(
        {
            "name": "orders",
            "source": {"mllp": {"port": 0}},
            "filter": [{"field": "MSH-9.1", "equals": "OML"}],
            "correlate": {"placer": "ORC-2"},
            "destinations": {"lab": {"mllp": LAB}},
            "retention": {"keep": "30d", **retention},
        }
    )


def er7(control_id: str, kind: str = "OML^O21", padding: str = "") -> bytes:
    return (
        f"MSH|^~\\&|EPR|HOSP|LAB|HOSP|20240101120000||{kind}|{control_id}|P|2.5.1\r"
        f"PID|1||P1^^^HOSP^MR||DOE^JANE\r"
        f"ORC|NW|{control_id}-PLACER\r" + (f"NTE|1||{padding}\r" if padding else "")
    ).encode()


def receive(store: Store, *items: Inbound) -> None:
    with store.begin() as conn:
        write_inbound(conn, list(items))


def process(store: Store, channel: ChannelConfig) -> None:
    Processor(store, {channel.name: compile_channel(channel)}).run_once()


def deliver(store: Store, control_id: str, status: str) -> None:
    """Give the delivery of ``control_id`` ``status``, with one attempt when it was tried."""
    with store.begin() as conn:
        delivery = conn.scalar(select(d.id).where(d.idempotency_key == control_id))
        conn.execute(update(deliveries).where(d.id == delivery).values(status=status))
        if status != "queued":
            conn.execute(
                attempts.insert().values(
                    delivery_id=delivery,
                    number=1,
                    started_at=utcnow(),
                    duration_ms=1.0,
                    outcome="sent" if status == "sent" else "failed",
                    response=b"MSA|AA|" + control_id.encode(),
                )
            )


def control_ids(store: Store) -> set[str]:
    with store.read() as conn:
        return set(conn.scalars(select(m.control_id)))


def count(store: Store, table: Any) -> int:
    with store.read() as conn:
        return conn.scalar(select(func.count()).select_from(table)) or 0


def old(control_id: str, kind: str = "OML^O21", **extra: Any) -> Inbound:
    return hl7_inbound("orders", er7(control_id, kind), received_at=utcnow() - OLD, **extra)


def young(control_id: str, kind: str = "OML^O21") -> Inbound:
    return hl7_inbound("orders", er7(control_id, kind), received_at=utcnow() - timedelta(days=1))


def as_blob(store: Store, raw: bytes, **extra: Any) -> Inbound:
    """``raw`` received as a source streams a large payload: into the blob store."""
    return hl7_inbound("orders", store.blobs.put(raw), parse_header(raw), **extra)


def test_only_finished_messages_older_than_kept_go_and_all_that_is_theirs_with_them(store):
    channel = orders()
    receive(
        store,
        old("SENT"),
        old("ADT", "ADT^A01"),  # filtered: no route takes it
        old("QUEUED"),
        old("HELD"),
        old("FAILED"),
        old("RETRYING"),
        old("ERROR", status="error", error="rejected"),
        hl7_inbound("orders", er7("NEW"), received_at=utcnow() - timedelta(days=29)),
    )
    process(store, channel)
    for control_id, status in [
        ("SENT", "sent"),
        ("HELD", "held"),
        ("FAILED", "failed"),
        ("RETRYING", "retrying"),
        ("NEW", "sent"),
    ]:
        deliver(store, control_id, status)
    receive(store, old("UNPROCESSED"))
    with store.begin() as conn:
        sent = conn.scalar(select(m.id).where(m.control_id == "SENT"))
        conn.execute(message_flags.insert().values(flag="unmatched-order", message_id=sent))
    assert count(store, correlations) == 14  # MSH-10 and the placer of the 7 processed

    pruned = Pruner(store).prune(channel)

    assert (pruned.messages, pruned.deliveries, pruned.attempts) == (2, 1, 1)
    assert control_ids(store) == {
        "QUEUED",
        "HELD",
        "FAILED",
        "RETRYING",
        "ERROR",
        "NEW",
        "UNPROCESSED",
    }
    assert count(store, message_flags) == 0
    assert count(store, correlations) == 10  # SENT's and ADT's went
    assert count(store, attempts) == 4  # HELD, FAILED, RETRYING and NEW keep theirs
    with store.read() as conn:
        (event,) = conn.execute(
            select(audit_events).where(audit_events.c.action == "retention.prune")
        ).all()
    assert (event.actor, event.target) == ("tie-retention", "channel:orders")
    assert json.loads(event.details)["messages"] == 2
    assert audit.verify(store).ok


def test_a_preview_counts_and_changes_nothing(store):
    receive(store, old("ONE"), old("TWO"))
    process(store, orders())
    deliver(store, "ONE", "sent")

    preview = Pruner(store).preview(orders())

    assert preview.messages == 1
    assert control_ids(store) == {"ONE", "TWO"}
    assert count(store, audit_events) == 0


def test_removing_searches_indexes_never_scans_a_table(tmp_path):
    """Each statement retention runs, and each lookup a foreign key makes when a message or
    a delivery is deleted (SQLite's ``foreign_keys=ON``, as PostgreSQL's), finds its rows
    through an index: a scan of messages or deliveries per removed row held the writer,
    and every sender behind it, for minutes on a store of some hundred thousand messages."""
    store = Store(f"sqlite:///{tmp_path / 'plans.db'}")
    upgrade(store)
    receive(store, old("SENT"), old("ADT", "ADT^A01"), young("NEW"))
    process(store, orders())
    deliver(store, "SENT", "sent")
    run: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            run.append((statement, parameters))

    for engine in (store.writer, store.reader):
        event.listen(engine, "before_cursor_execute", record)
    assert Pruner(store).prune(orders()).messages == 2
    lookups = [
        (f"SELECT 1 FROM {fk.parent.table.name} WHERE {fk.parent.name} = ?", (1,))
        for table in metadata.sorted_tables
        for fk in table.foreign_keys
        if fk.column.table.name in ("messages", "deliveries")
    ]
    with store.read() as conn:
        driver = conn.connection.driver_connection
        scans = {
            f"{detail} in: {statement}"
            for statement, parameters in [*run, *lookups]
            for *_, detail in driver.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            if detail.startswith("SCAN") and "audit_events" not in detail
        }
    store.dispose()
    assert len(lookups) >= 8
    assert scans == set()


def test_the_newest_message_and_delivery_stay_so_their_ids_are_never_given_again(store):
    receive(store, old("FIRST"), old("LAST"), old("ADT", "ADT^A01"))
    process(store, orders())
    deliver(store, "FIRST", "sent")
    deliver(store, "LAST", "sent")
    newest_batch = batch(store, "released", "FIRST")
    with store.read() as conn:
        used = {
            table.name: conn.scalar(select(func.max(table.c.id)))
            for table in (messages, deliveries)
        }

    pruned = Pruner(store).prune(orders())

    assert pruned.messages == 1
    assert control_ids(store) == {"LAST", "ADT"}  # the newest delivery's, the newest
    with store.read() as conn:  # emptied, but its id names it in the audit log
        assert list(conn.scalars(select(hold_batches.c.id))) == [newest_batch]
    receive(store, young("NEXT"))
    process(store, orders())
    with store.read() as conn:
        (message_id, delivery_id) = conn.execute(
            select(m.id, d.id).join(deliveries, d.message_id == m.id).where(m.control_id == "NEXT")
        ).one()
    assert message_id > used["messages"]
    assert delivery_id > used["deliveries"]


def test_batches_each_commit_with_their_own_audit_event(store):
    ids = [f"ADT{n}" for n in range(5)]
    receive(store, *(old(i, "ADT^A01") for i in ids), young("NEW", "ADT^A01"))
    process(store, orders())

    pruned = Pruner(store, batch=2).prune(orders())

    assert pruned.messages == 5
    assert control_ids(store) == {"NEW"}
    with store.read() as conn:
        details = conn.scalars(
            select(audit_events.c.details).where(audit_events.c.action == "retention.prune")
        )
        assert [json.loads(x)["messages"] for x in details] == [2, 2, 1]


def test_a_later_copy_stays_and_loses_only_its_link_and_the_registry_keeps_its_message(store):
    receive(store, old("ORIGINAL", "ADT^A01"), old("REGISTERED", "ADT^A01"))
    process(store, orders())
    with store.begin() as conn:
        original = conn.scalar(select(m.id).where(m.control_id == "ORIGINAL"))
        registered = conn.scalar(select(m.id).where(m.control_id == "REGISTERED"))
        write_inbound(conn, [hl7_inbound("orders", er7("COPY"))])
        conn.execute(
            update(messages).where(m.control_id == "COPY").values(reprocessed_from=original)
        )
        conn.execute(
            service_requests.insert().values(
                channel="orders",
                resource_id="sr-1",
                message_id=registered,
                version=1,
                updated_at=utcnow(),
                resource="{}",
            )
        )

    assert Pruner(store).prune(orders()).messages == 1

    assert control_ids(store) == {"REGISTERED", "COPY"}
    with store.read() as conn:
        assert conn.scalar(select(m.reprocessed_from).where(m.control_id == "COPY")) is None


def job(store: Store, control_id: str, status: str) -> str:
    """A DPS job the message of ``control_id`` started (keyed by its UUID), now ``status``."""
    with store.begin() as conn:
        uuid = conn.scalar(select(m.uuid).where(m.control_id == control_id))
        conn.execute(jobs.insert().values(job_id=uuid, status=status, updated_at=utcnow()))
    return uuid


def batch(store: Store, state: str, *control_ids: str) -> int:
    """A hold batch of ``state``, approved by two people, of the deliveries of ``control_ids``."""
    now = utcnow()
    with store.begin() as conn:
        batch_id = conn.execute(
            hold_batches.insert()
            .values(
                channel="orders",
                destination="lab",
                state=state,
                required=2,
                deliveries=len(control_ids),
                requested_by="sam",
                requested_at=now,
            )
            .returning(hold_batches.c.id)
        ).scalar_one()
        approvals = [
            {"batch_id": batch_id, "approver": a, "approved_at": now} for a in ("ann", "bob")
        ]
        conn.execute(hold_approvals.insert(), approvals)
        conn.execute(
            update(deliveries)
            .where(d.idempotency_key.in_(control_ids))
            .values(hold_batch_id=batch_id)
        )
    return batch_id


def test_a_finished_dps_job_goes_with_its_message_and_one_in_progress_keeps_it(store):
    receive(store, old("DONE", "ADT^A01"), old("RUNNING", "ADT^A01"))
    process(store, orders())
    done, running = job(store, "DONE", "completed"), job(store, "RUNNING", "sent_to_dps")

    pruned = Pruner(store).prune(orders())

    assert control_ids(store) == {"RUNNING"}
    with store.read() as conn:
        assert list(conn.scalars(select(jobs.c.job_id))) == [running]
    assert (pruned.messages, pruned.jobs) == (1, 1)
    assert done != running


def test_a_decided_hold_batch_goes_with_its_last_delivery_and_a_pending_one_stays(store):
    receive(store, old("RELEASED"), old("REJECTED"), old("PART"), old("PENDING"), young("YOUNG"))
    process(store, orders())
    for control_id in ("RELEASED", "PART", "YOUNG"):
        deliver(store, control_id, "sent")
    deliver(store, "REJECTED", "cancelled")
    deliver(store, "PENDING", "cancelled")  # cancelled while its batch awaits a decision
    released, rejected = batch(store, "released", "RELEASED"), batch(store, "rejected", "REJECTED")
    part, pending = batch(store, "released", "PART", "YOUNG"), batch(store, "pending", "PENDING")

    pruned = Pruner(store).prune(orders())

    assert control_ids(store) == {"YOUNG"}
    with store.read() as conn:
        assert set(conn.scalars(select(hold_batches.c.id))) == {part, pending}
        assert set(conn.scalars(select(hold_approvals.c.batch_id))) == {part, pending}
    assert (pruned.messages, pruned.batches) == (4, 2)
    with store.read() as conn:
        events = conn.scalars(
            select(audit_events.c.details).where(audit_events.c.action == "retention.prune")
        )
        assert [json.loads(e)["hold_batches"] for e in events] == [2]
    assert {released, rejected}.isdisjoint({part, pending})
    assert audit.verify(store).ok


def test_the_archive_holds_every_removed_message_whole_before_it_goes(store, tmp_path):
    big = "X" * 4096  # above the store's 1 KiB blob threshold
    receive(
        store,
        old("SENT"),
        as_blob(store, er7("BIG", "ADT^A01", padding=big), received_at=utcnow() - OLD),
        young("NEW"),
    )
    process(store, orders())
    deliver(store, "SENT", "sent")
    archive = tmp_path / "archive"

    pruned = Pruner(store).prune(orders(archive=str(archive)))

    (path,) = pruned.archives
    assert Path(path).parent == archive / "orders"
    with gzip.open(path, "rt") as lines:
        records = [json.loads(line) for line in lines]
    assert [r["message"]["control_id"] for r in records] == ["SENT", "BIG"]
    sent = records[0]
    assert sent["message"]["raw"].startswith("MSH|^~\\&|EPR")
    assert {k["key"]: k["value"] for k in sent["keys"]} == {
        "control_id": "SENT",
        "placer": "SENT-PLACER",
    }
    (delivery,) = sent["deliveries"]
    assert (delivery["status"], delivery["destination"]) == ("sent", "lab")
    assert [a["response"] for a in delivery["attempts"]] == ["MSA|AA|SENT"]
    sha256 = records[1]["message"]["blob_sha256"]
    assert (archive / "blobs" / sha256).read_bytes() == er7("BIG", "ADT^A01", padding=big)
    assert control_ids(store) == {"NEW"}


def test_a_blob_goes_when_no_row_names_it_and_it_is_not_young(store):
    shared = er7("SHARED", "ADT^A01", padding="S" * 4096)
    alone = er7("ALONE", "ADT^A01", padding="A" * 4096)
    young = er7("YOUNG", "ADT^A01", padding="Y" * 4096)
    receive(
        store,
        *(as_blob(store, raw, received_at=utcnow() - OLD) for raw in (shared, alone, young)),
        as_blob(store, shared),  # a recent copy names the same blob
    )
    process(store, orders())
    path = {raw: store.blobs.path(as_blob(store, raw).raw.sha256) for raw in (shared, alone)}
    aged = time.time() - 2 * 3600
    for raw in (shared, alone):
        os.utime(path[raw], (aged, aged))

    pruned = Pruner(store).prune(orders())

    assert (pruned.messages, pruned.blobs) == (3, 1)
    assert not path[alone].exists()
    assert path[shared].exists()
    young_path = store.blobs.path(as_blob(store, young).raw.sha256)
    assert young_path.exists()  # no row names it, but its grace has not passed


def test_a_reused_blob_is_young_again_and_a_discarded_one_is_written_again(tmp_path):
    blobs = BlobStore(tmp_path, threshold=16)
    first = blobs.put(b"A" * 100)
    path = blobs.path(first.sha256)
    aged = time.time() - 2 * 3600
    os.utime(path, (aged, aged))

    again = blobs.put(b"A" * 100)  # reused: touched
    assert again.sha256 == first.sha256
    assert not blobs.discard(first.sha256)
    assert path.read_bytes() == b"A" * 100

    os.utime(path, (aged, aged))
    assert blobs.discard(first.sha256)
    assert not path.exists()
    blobs.put(b"A" * 100)  # a new copy after the discard is written anew
    assert path.read_bytes() == b"A" * 100


def test_a_completed_dps_job_stays_while_the_outputs_of_its_results_are_to_be_sent(store):
    """Until its CSV files and summary email are sent, a completed job may still become
    failed_outputs: it, and its intake message, stay as long as one of them is unfinished."""
    receive(store, old("INTAKE", "ADT^A01"), old("RESULTS"), young("NEW"))
    process(store, orders())
    intake = job(store, "INTAKE", "completed")
    with store.begin() as conn:
        results = conn.scalar(select(m.id).where(m.control_id == "RESULTS"))
        conn.execute(correlations.insert().values(message_id=results, key="dps_job", value=intake))

    Pruner(store).prune(orders())

    assert control_ids(store) == {"INTAKE", "RESULTS", "NEW"}
    deliver(store, "RESULTS", "sent")
    pruned = Pruner(store).prune(orders())
    assert control_ids(store) == {"NEW"}
    assert (pruned.messages, pruned.jobs) == (2, 1)
