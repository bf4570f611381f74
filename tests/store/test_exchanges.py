"""Synchronous exchanges in the store: one message, one delivery, one attempt; conversations;
the registry's versions; and exchanges a stop interrupted."""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import timedelta

from sqlalchemy import select, update

from router.fhir.bars import IndexedRequest, conversation_keys, service_requests
from router.fhir.exchange import (
    FORWARD,
    Outcome,
    Registration,
    accept_message,
    close_exchange,
    conversation_messages,
    fail_interrupted,
    open_exchange,
)
from router.fhir.recorder import Recorder
from router.fhir.registry import index, search
from router.fhir.search_params import tokens
from router.store.deliveries import claim
from router.store.inbound import VALIDATING, Inbound, utcnow
from router.store.ingest import GroupCommitWriter
from router.store.schema import attempts, correlations, deliveries, messages


def _open(store, document, *, owner="node-a", lease=30.0):
    """An exchange as BaRS routing stores it: opened validating, then accepted (its models
    passed) with its ServiceRequests."""
    header = document["entry"][0]["resource"]
    item = Inbound(
        "bars",
        json.dumps(document).encode(),
        content_type="fhir+json",
        control_id=document["id"],
        status=VALIDATING,
    )
    with store.begin() as conn:
        opened = open_exchange(
            conn,
            item,
            destination=FORWARD,
            address="http://receiver/fhir/$process-message",
            owner=owner,
            lease=lease,
            keys=conversation_keys(document, header, {}),
            conversation=True,
        )
    registration = Registration(service_requests(document), "dos:2222222222", "dos:111111111")
    with store.begin() as conn:
        assert accept_message(conn, item, registration, opened.message_id)
    return opened


def test_an_exchange_is_a_message_a_delivery_and_an_attempt(store, bars_samples):
    opened = _open(store, bars_samples["servicerequest-request_validation"])
    with store.read() as conn:
        delivery = conn.execute(select(deliveries)).one()
    assert (delivery.status, delivery.destination, delivery.lease_owner) == (
        "sending",
        FORWARD,
        "node-a",
    )
    # No dispatcher worker sends it: a claim for its name finds nothing due.
    claimed = claim(
        store, "bars", FORWARD, ordered=False, lanes=1, limit=10, lease=30, owner="node-b"
    )
    assert claimed.lanes == []
    with store.begin() as conn:
        close_exchange(
            conn,
            opened.delivery_id,
            Outcome(True, utcnow(), 12.5, b"HTTP/1.1 200 OK\r\n\r\n{}", None),
        )
    with store.read() as conn:
        delivery = conn.execute(select(deliveries)).one()
        attempt = conn.execute(select(attempts)).one()
        message = conn.execute(select(messages)).one()
    assert (delivery.status, delivery.attempts, delivery.lease_owner) == ("sent", 1, None)
    assert (attempt.number, attempt.outcome, attempt.response) == (
        1,
        "sent",
        b"HTTP/1.1 200 OK\r\n\r\n{}",
    )
    assert message.status == "processed"


def test_a_response_joins_the_requests_conversation(store, bars_samples):
    request = _open(store, bars_samples["servicerequest-request_validation"])
    response = _open(store, bars_samples["servicerequest-response_validation"])
    unrelated = _open(store, bars_samples["booking-request_process-message"])
    assert request.conversation == response.conversation != unrelated.conversation
    with store.read() as conn:
        found = conversation_messages(
            conn, bars_samples["servicerequest-response_validation"]["id"]
        )
        rows, _ = search(conn, "bars", status=tokens("status", ["active"]))
    assert [m["id"] for m in found] == [request.message_id, response.message_id]
    [row] = rows
    assert (row["version"], row["sender"], row["receiver"], row["patient"]) == (
        2,
        "dos:2222222222",
        "dos:111111111",
        "3478526985",
    )


def test_a_cancelled_appointment_joins_its_bookings_conversation(store, bars_samples):
    booking = bars_samples["booking-request_process-message"]
    cancellation = copy.deepcopy(booking)
    cancellation["id"] = "0d7c3f64-6a4e-4a43-9c55-6d3f1d1e0b11"
    appointment = cancellation["entry"][1]
    appointment["resource"]["status"] = "cancelled"
    booked = _open(store, booking)
    cancelled = _open(store, cancellation)
    assert cancelled.conversation == booked.conversation
    reference = "Appointment/" + appointment["fullUrl"].removeprefix("urn:uuid:")
    with store.read() as conn:
        found = conversation_messages(conn, reference)
        cancels = conn.execute(
            select(correlations.c.message_id, correlations.c.value).where(
                correlations.c.key == "cancels"
            )
        ).all()
    assert [m["id"] for m in found] == [booked.message_id, cancelled.message_id]
    assert [tuple(row) for row in cancels] == [(cancelled.message_id, reference)]


def test_the_registry_matches_a_request_by_system_and_value(store, bars_samples):
    def request(rid: str, system: str) -> IndexedRequest:
        resource = {"resourceType": "ServiceRequest", "id": rid, "status": "active"}
        return IndexedRequest(rid, "active", "9000000009", ((system, "REF-1"),), resource)

    message_id = _open(store, bars_samples["booking-request_process-message"]).message_id
    for item in (request("a", "urn:sys:a"), request("b", "urn:sys:b"), request("c", "urn:sys:a")):
        with store.begin() as conn:
            index(conn, "bars", message_id, [item], sender="s", receiver="r", now=utcnow())
    with store.read() as conn:
        rows, total = search(conn, "bars", identifier=tokens("identifier", ["REF-1"]))
    # "c" shares system and value with "a": a new version of it; "b" only the value.
    assert sorted((row["resource_id"], row["version"]) for row in rows) == [("a", 2), ("b", 1)]
    assert total == 2


def test_exchanges_a_stop_interrupted_fail_and_others_stay(store, bars_samples):
    mine = _open(store, bars_samples["servicerequest-request_validation"], owner="node-a")
    other = _open(store, bars_samples["booking-request_process-message"], owner="node-b")
    expired = _open(store, bars_samples["servicerequest-response_validation"], owner="node-c")
    with store.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.id == expired.delivery_id)
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    assert fail_interrupted(store, "node-a") == 2
    with store.read() as conn:
        status = dict(conn.execute(select(deliveries.c.id, deliveries.c.status)).all())
        error = conn.scalar(
            select(deliveries.c.last_error).where(deliveries.c.id == mine.delivery_id)
        )
    assert status == {
        mine.delivery_id: "failed",
        other.delivery_id: "sending",  # node-b is still waiting for its receiver
        expired.delivery_id: "failed",
    }
    assert error.startswith("interrupted")


def test_a_record_that_fails_is_lost_alone(store, bars_samples):
    """Records are written together; one the database refuses midway is rolled back, and
    the rest are kept (on PostgreSQL too, where an error aborts the transaction)."""
    opened = [
        _open(store, bars_samples[name])
        for name in (
            "servicerequest-request_validation",
            "booking-request_process-message",
            "servicerequest-response_validation",
        )
    ]
    sent = Outcome(True, utcnow(), 3.0, b"HTTP/1.1 200 OK\r\n\r\n{}", None)

    def broken(conn):
        close_exchange(conn, opened[1].delivery_id, sent)
        conn.execute(attempts.insert(), {"delivery_id": opened[1].delivery_id})  # NOT NULLs

    async def record() -> None:
        recorder = Recorder(writer)
        recorder.add(lambda conn: close_exchange(conn, opened[0].delivery_id, sent))
        recorder.add(broken)
        recorder.add(lambda conn: close_exchange(conn, opened[2].delivery_id, sent))
        await recorder.written()

    writer = GroupCommitWriter(store)
    writer.start()
    try:
        asyncio.run(record())
    finally:
        writer.stop()
    with store.read() as conn:
        status = dict(conn.execute(select(deliveries.c.id, deliveries.c.status)).all())
        recorded = conn.scalars(select(attempts.c.delivery_id).order_by(attempts.c.id)).all()
    assert [status[o.delivery_id] for o in opened] == ["sent", "sending", "sent"]
    assert recorded == [opened[0].delivery_id, opened[2].delivery_id]
