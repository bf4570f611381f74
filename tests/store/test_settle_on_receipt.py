"""Messages of declarative channels are stored settled, with their deliveries, in the
transaction that stores them; everything else still waits for the processor."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from store_testing import orders_channel, refused, set_paused

from router import mappings
from router.connectors.hl7_inbound import hl7_inbound
from router.pipeline import CompiledChannel
from router.processing import Processor
from router.store.database import Store
from router.store.ingest import GroupCommitWriter
from router.store.schema import correlations, deliveries, messages
from router.store.settled import hold_back

m, d, c = messages.c, deliveries.c, correlations.c


class Hooks:
    """What the writer told the engine after each commit."""

    def __init__(self) -> None:
        self.calls: list[tuple[set[tuple[str, str]], bool]] = []

    def __call__(self, touched: set[tuple[str, str]], unsettled: bool) -> None:
        self.calls.append((touched, unsettled))


@contextmanager
def writer_for(store: Store, channels: dict[str, CompiledChannel]) -> Iterator[Any]:
    """A running writer whose settler is a processor that never runs a round of its own."""
    hooks = Hooks()
    writer = GroupCommitWriter(store, on_commit=hooks, settler=Processor(store, channels))
    writer.start()
    try:
        yield writer, hooks
    finally:
        writer.stop()


def _message(store: Store, uuid: str) -> Any:
    with store.read() as conn:
        return conn.execute(select(messages).where(m.uuid == uuid)).one()


def _deliveries(store: Store, message_id: int) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(deliveries).where(d.message_id == message_id)))


def _keys(store: Store, message_id: int) -> set[tuple[str, str]]:
    with store.read() as conn:
        return set(conn.execute(select(c.key, c.value).where(c.message_id == message_id)))


def test_a_declarative_channels_message_commits_settled_with_its_deliveries(store, er7):
    with writer_for(store, {"orders": orders_channel()}) as (writer, hooks):
        receipt = writer.submit_sync(hl7_inbound("orders", er7("ORD1")))
        kept_back = writer.submit_sync(hl7_inbound("orders", er7("RES1", kind="ORU^R01")))

    row = _message(store, receipt.uuid)
    assert (row.status, row.error) == ("processed", None)
    assert row.processed_at is not None
    (delivery,) = _deliveries(store, row.id)
    assert (delivery.destination, delivery.status, delivery.payload) == (
        "lab",
        "queued",
        er7("ORD1"),
    )
    assert delivery.idempotency_key == "ORD1"
    assert _keys(store, row.id) == {("control_id", "ORD1"), ("placer", "ORD1-PLACER")}
    filtered = _message(store, kept_back.uuid)
    assert filtered.status == "filtered" and "filter not met" in filtered.error
    assert _deliveries(store, filtered.id) == []
    assert hooks.calls == [({("orders", "lab")}, False), (set(), False)]


def test_a_paused_channels_message_waits_for_the_processor(store, er7):
    channels = {"orders": orders_channel()}
    set_paused(store, "orders", True)
    with writer_for(store, channels) as (writer, hooks):
        receipt = writer.submit_sync(hl7_inbound("orders", er7("ORD1")))

    row = _message(store, receipt.uuid)
    assert (row.status, row.processed_at) == ("received", None)
    assert _deliveries(store, row.id) == []
    assert hooks.calls == [(set(), True)]
    set_paused(store, "orders", False)
    assert Processor(store, channels).run_once() == 1
    assert [x.destination for x in _deliveries(store, row.id)] == ["lab"]


def test_a_channel_with_a_mapping_is_left_to_the_processor(store, er7, tmp_path: Path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "tag.py").write_text("def tag(message):\n    return message.raw + b'ZTG|1\\r'\n")
    mappings.mount(folder)
    channels = {"orders": orders_channel(transform="tag:tag")}
    with writer_for(store, channels) as (writer, hooks):
        receipt = writer.submit_sync(hl7_inbound("orders", er7("ORD1")))

    assert _message(store, receipt.uuid).status == "received"
    assert hooks.calls == [(set(), True)]
    assert Processor(store, channels).run_once() == 1
    (delivery,) = _deliveries(store, _message(store, receipt.uuid).id)
    assert delivery.payload.endswith(b"ZTG|1\r")


def test_a_duplicate_is_filtered_not_settled_again(store, er7):
    with writer_for(store, {"orders": orders_channel()}) as (writer, _):
        first = writer.submit_sync(hl7_inbound("orders", er7("ORD1"), idempotency_window=60))
        again = writer.submit_sync(hl7_inbound("orders", er7("ORD1"), idempotency_window=60))

    assert again.duplicate_of == first.uuid
    repeat = _message(store, again.uuid)
    assert repeat.status == "filtered" and "duplicate of" in repeat.error
    assert _deliveries(store, repeat.id) == []
    assert _keys(store, repeat.id) == set()
    assert len(_deliveries(store, _message(store, first.uuid).id)) == 1


def test_when_its_deliveries_cannot_be_written_the_message_is_still_acknowledged(store, er7):
    channels = {"orders": orders_channel()}
    with writer_for(store, channels) as (writer, hooks), refused(store, "deliveries"):
        receipt = writer.submit_sync(hl7_inbound("orders", er7("ORD1"), ack=b"MSA|AA|ORD1"))

    assert receipt.ack == b"MSA|AA|ORD1"
    row = _message(store, receipt.uuid)
    assert (row.status, row.error, row.processed_at) == ("received", None, None)
    assert _keys(store, row.id) == set()
    assert hooks.calls == [(set(), True)]
    assert Processor(store, channels).run_once() == 1
    assert [x.destination for x in _deliveries(store, row.id)] == ["lab"]


@pytest.mark.parametrize("size", [10, 2048])
def test_a_payload_above_the_blob_threshold_is_left_to_the_processor(store, er7, size):
    store.blobs.threshold = size
    with writer_for(store, {"orders": orders_channel()}) as (writer, _):
        receipt = writer.submit_sync(hl7_inbound("orders", er7("ORD1")))
    expected = "received" if len(er7("ORD1")) > size else "processed"
    assert _message(store, receipt.uuid).status == expected


def test_a_resumed_channels_new_message_waits_behind_its_backlog(store, er7):
    """Deliveries go in delivery id order: a message settled on receipt while older ones
    of its channel are still ``received`` would overtake them (DESIGN.md §3.4)."""
    channels = {"orders": orders_channel(), "other": orders_channel("other")}
    set_paused(store, "orders", True)
    with writer_for(store, channels) as (writer, _):
        old = writer.submit_sync(hl7_inbound("orders", er7("ORD1")))
        set_paused(store, "orders", False)  # resumed; the processor has not run yet
        new = writer.submit_sync(hl7_inbound("orders", er7("ORD2")))
        elsewhere = writer.submit_sync(hl7_inbound("other", er7("OTH1")))

    assert _message(store, new.uuid).status == "received"
    assert _message(store, elsewhere.uuid).status == "processed", "another channel's backlog"
    Processor(store, channels).run_once()
    ids = [_deliveries(store, _message(store, r.uuid).id)[0].id for r in (old, new)]
    assert ids == sorted(ids)


def test_a_message_behind_an_undecided_one_in_the_same_commit_waits_for_it(store, er7):
    """A large payload is left to the processor: a small one after it must not pass it."""
    big, small, other = (
        hl7_inbound(c, er7(i)) for c, i in [("orders", "BIG1"), ("orders", "S1"), ("other", "O1")]
    )
    decided = object()
    small.outcome = other.outcome = decided
    with store.begin() as conn:
        hold_back(conn, [big, small, other])

    assert (big.outcome, small.outcome, other.outcome) == (None, None, decided)
