"""Messages stored ``validating`` (a FHIR body whose models are still being validated) are
left alone by the processor until they are released: received, settled at once, or an
error with the reason; a release counts once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from store_testing import orders_channel, set_paused
from test_settle_on_receipt import Hooks, writer_for

from router.connectors.hl7_inbound import hl7_inbound
from router.fhir import recovery
from router.processing import Processor
from router.store.database import Store
from router.store.inbound import VALIDATING, Inbound
from router.store.ingest import GroupCommitWriter
from router.store.schema import deliveries, messages

m, d = messages.c, deliveries.c


def _validating(er7: Any, control_id: str) -> Inbound:
    item = hl7_inbound("orders", er7(control_id), idempotency_window=60)
    item.status = VALIDATING
    return item


def _row(store: Store, uuid: str) -> Any:
    with store.read() as conn:
        return conn.execute(select(messages).where(m.uuid == uuid)).one()


def _destinations(store: Store, message_id: int) -> list[str]:
    with store.read() as conn:
        return list(conn.scalars(select(d.destination).where(d.message_id == message_id)))


def test_a_validating_message_waits_and_is_settled_when_released(store, er7):
    channels = {"orders": orders_channel()}
    with writer_for(store, channels) as (writer, hooks):
        item = _validating(er7, "ORD1")
        receipt = writer.submit_sync(item)
        row = _row(store, receipt.uuid)
        assert (row.status, row.processed_at) == (VALIDATING, None)
        assert Processor(store, channels).run_once() == 0
        assert hooks.calls == [(set(), False)]

        assert writer.release(item).result(10) is True

    row = _row(store, receipt.uuid)
    assert (row.status, row.error) == ("processed", None)
    assert row.processed_at is not None
    assert _destinations(store, row.id) == ["lab"]
    assert hooks.calls[-1] == ({("orders", "lab")}, False)


def test_a_released_message_of_a_paused_channel_goes_to_the_processor(store, er7):
    channels = {"orders": orders_channel()}
    set_paused(store, "orders", True)
    with writer_for(store, channels) as (writer, hooks):
        item = _validating(er7, "ORD1")
        writer.submit_sync(item)
        writer.release(item).result(10)

    row = _row(store, item.uuid)
    assert (row.status, row.processed_at) == ("received", None)
    assert hooks.calls[-1] == (set(), True)
    set_paused(store, "orders", False)
    assert Processor(store, channels).run_once() == 1
    assert _destinations(store, row.id) == ["lab"]


def test_a_refused_message_becomes_an_error_with_its_reason(store, er7):
    with writer_for(store, {"orders": orders_channel()}) as (writer, _):
        item = _validating(er7, "ORD1")
        writer.submit_sync(item)
        assert writer.release(item, "rejected (400): Bundle.type: wrong").result(10) is True

    row = _row(store, item.uuid)
    assert (row.status, row.error) == ("error", "rejected (400): Bundle.type: wrong")
    assert row.processed_at is not None
    assert _destinations(store, row.id) == []


def test_a_message_is_released_once(store, er7):
    """Two releases (the endpoint's and a recovery's) race: the second changes nothing."""
    with writer_for(store, {"orders": orders_channel()}) as (writer, _):
        item = _validating(er7, "ORD1")
        writer.submit_sync(item)
        assert writer.release(item).result(10) is True
        assert writer.release(item, "rejected (400): late").result(10) is False
        again = _validating(er7, "ORD2")
        writer.submit_sync(again)
        assert writer.release(again, "rejected (400): first").result(10) is True
        assert writer.release(again).result(10) is False

    assert _row(store, item.uuid).status == "processed"
    assert _destinations(store, _row(store, item.uuid).id) == ["lab"]
    assert (_row(store, again.uuid).status, _row(store, again.uuid).error) == (
        "error",
        "rejected (400): first",
    )


def test_a_repeat_of_a_validating_message_is_a_duplicate(store, er7):
    with writer_for(store, {"orders": orders_channel()}) as (writer, _):
        first = writer.submit_sync(_validating(er7, "ORD1"))
        repeat = writer.submit_sync(_validating(er7, "ORD1"))

    assert repeat.duplicate_of == first.uuid
    assert _row(store, repeat.uuid).status == "filtered"


def test_a_repeat_its_checks_refuse_is_an_error_like_its_original(store, er7):
    """Both copies of a Bundle the models refuse came in together: each sender is told 400,
    and each copy is kept as the error it was answered with, not as a duplicate."""
    with writer_for(store, {"orders": orders_channel()}) as (writer, _):
        first, repeat = _validating(er7, "ORD1"), _validating(er7, "ORD1")
        writer.submit_sync(first)
        assert writer.submit_sync(repeat).duplicate_of == first.uuid
        for item in (first, repeat):
            writer.release(item, "rejected (400): Bundle.type: wrong").result(10)
        assert writer.release(repeat, "rejected (400): again").result(10) is False

    for item in (first, repeat):
        row = _row(store, item.uuid)
        assert (row.status, row.error, row.duplicate_of) == (
            "error",
            "rejected (400): Bundle.type: wrong",
            None,
        )


def test_without_a_settler_a_released_message_is_received_for_the_processor(store, er7):
    hooks = Hooks()
    writer = GroupCommitWriter(store, on_commit=hooks)
    writer.start()
    try:
        item = _validating(er7, "ORD1")
        writer.submit_sync(item)
        writer.release(item).result(10)
    finally:
        writer.stop()

    assert _row(store, item.uuid).status == "received"
    assert hooks.calls == [(set(), False), (set(), True)]
    assert Processor(store, {"orders": orders_channel()}).run_once() == 1


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_the_look_for_stranded_messages_gives_up_behind_a_lock(store, monkeypatch):
    """The gateway's periodic look for messages left ``validating`` waited behind another
    session's lock on the messages, and the engine's stop (which waits for it) with it."""
    monkeypatch.setattr(recovery, "LOCK_TIMEOUT_MS", 100)
    outcome: list[BaseException | list[Any]] = []

    def look() -> None:
        try:
            outcome.append(recovery.stranded(store))
        except Exception as exc:
            outcome.append(exc)

    blocker = store.writer.connect()
    try:
        blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        looking = threading.Thread(target=look, daemon=True)
        looking.start()
        looking.join(30)
        gave_up = not looking.is_alive()
        blocker.rollback()
        looking.join(30)
    finally:
        blocker.close()
    assert gave_up, "the look waited for the lock"
    assert isinstance(outcome[0], OperationalError)
    assert "lock timeout" in str(outcome[0])
