"""Replay keeps the original and links the copy; the audit chain shows any edit or deletion."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import delete, func, select, update

from router import audit
from router.config import ChannelConfig
from router.pipeline import compile_channel
from router.processing import Processor
from router.replay import reprocess, resend
from router.store.database import Store
from router.store.schema import audit_events, deliveries, messages

m, d, a = messages.c, deliveries.c, audit_events.c
CHANNEL = ChannelConfig.model_validate(
    {
        "name": "orders",
        "source": {"mllp": {"port": 0}},
        "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": 2576}}},
    }
)


def _processed(store: Store, receive: Any, er7: Any, control_id: str = "ORD1") -> int:
    """A message received and processed into one queued delivery; returns its id."""
    (message_id,) = receive("orders", er7(control_id))
    Processor(store, {"orders": compile_channel(CHANNEL)}).run_once()
    return message_id


def _one(store: Store, table: Any, *where: Any) -> dict[str, Any]:
    with store.read() as conn:
        return dict(conn.execute(select(table).where(*where)).one()._mapping)


def _events(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(audit_events).order_by(a.id)))


def _count(store: Store, table: Any) -> int:
    with store.read() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def test_reprocess_stores_a_linked_copy_and_keeps_the_original(store, receive, er7):
    original_id = _processed(store, receive, er7)
    before = _one(store, messages, m.id == original_id)
    old_delivery = _one(store, deliveries, d.message_id == original_id)

    result = reprocess(store, original_id, reason="lab lost the order", actor="alice")

    copy = _one(store, messages, m.uuid == result.copy)
    assert copy["id"] != original_id
    assert (copy["status"], copy["reprocessed_from"]) == ("received", original_id)
    assert (copy["raw"], copy["channel"]) == (before["raw"], before["channel"])
    assert _one(store, messages, m.id == original_id) == before
    (event,) = _events(store)
    assert (event.actor, event.action) == ("alice", "reprocess")
    assert event.target == f"urn:tie:message:{before['uuid']}"
    assert json.loads(event.details) == {
        "reason": "lab lost the order",
        "copy": f"urn:tie:message:{result.copy}",
    }

    Processor(store, {"orders": compile_channel(CHANNEL)}).run_once()
    assert _one(store, messages, m.id == copy["id"])["status"] == "processed"
    assert _one(store, deliveries, d.message_id == original_id) == old_delivery
    new_delivery = _one(store, deliveries, d.message_id == copy["id"])
    assert new_delivery["payload"] == old_delivery["payload"]


def test_resend_queues_the_same_payload_with_the_same_idempotency_key(store, receive, er7):
    message_id = _processed(store, receive, er7)
    with store.begin() as conn:
        conn.execute(update(deliveries).values(status="failed", attempts=10, last_error="AR"))
    old = _one(store, deliveries, d.message_id == message_id)

    result = resend(store, old["id"], reason="lab fixed its interface", actor="bob")

    new = _one(store, deliveries, d.id == int(result.copy))
    assert new["resent_from"] == old["id"]
    assert (new["payload"], new["idempotency_key"]) == (old["payload"], old["idempotency_key"])
    assert (new["message_id"], new["destination"]) == (message_id, "lab")
    assert (new["status"], new["attempts"], new["last_error"]) == ("queued", 0, None)
    assert _one(store, deliveries, d.id == old["id"]) == old
    (event,) = _events(store)
    assert (event.actor, event.action) == ("bob", "resend")
    details = json.loads(event.details)
    assert details == {
        "reason": "lab fixed its interface",
        "delivery": old["id"],
        "new_delivery": new["id"],
    }


@pytest.mark.parametrize("reason", ["", "   "], ids=["empty", "blank"])
def test_replay_refuses_an_empty_reason(store, receive, er7, reason):
    message_id = _processed(store, receive, er7)
    delivery_id = _one(store, deliveries, d.message_id == message_id)["id"]

    with pytest.raises(ValueError, match="reason"):
        reprocess(store, message_id, reason=reason, actor="alice")
    with pytest.raises(ValueError, match="reason"):
        resend(store, delivery_id, reason=reason, actor="alice")

    assert (_count(store, messages), _count(store, deliveries)) == (1, 1)
    assert _events(store) == []


def _chain(store: Store, receive: Any, er7: Any) -> list[int]:
    """Four audit events from real actions; returns their ids."""
    message_id = _processed(store, receive, er7)
    reprocess(store, message_id, reason="first look", actor="alice")
    delivery_id = _one(store, deliveries, d.message_id == message_id)["id"]
    resend(store, delivery_id, reason="second try", actor="bob")
    with store.begin() as conn:
        audit.append(conn, "carol", "view", f"message:{message_id}", {"why": "support call"})
        audit.append(conn, "dave", "view", f"message:{message_id}", {"why": "audit"})
    ids = [e.id for e in _events(store)]
    assert len(ids) == 4
    return ids


def test_verify_passes_on_an_intact_chain(store, receive, er7):
    _chain(store, receive, er7)
    assert audit.verify(store) == audit.Verdict(ok=True, events=4)


def test_verify_names_an_edited_event(store, receive, er7):
    ids = _chain(store, receive, er7)
    with store.begin() as conn:
        conn.execute(
            update(audit_events).where(a.id == ids[1]).values(details='{"reason": "nothing"}')
        )

    verdict = audit.verify(store)
    assert (verdict.ok, verdict.broken_id) == (False, ids[1])
    assert "edited" in verdict.reason


def test_verify_names_the_event_after_a_deleted_one(store, receive, er7):
    ids = _chain(store, receive, er7)
    with store.begin() as conn:
        conn.execute(delete(audit_events).where(a.id == ids[1]))

    verdict = audit.verify(store)
    assert (verdict.ok, verdict.broken_id) == (False, ids[2])
    assert "removed" in verdict.reason
