"""Replay keeps the original and links the copy; the audit chain shows any edit or deletion."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from alembic import command
from sqlalchemy import delete, func, select, update

from router import audit
from router.channel_control import overview
from router.config import ChannelConfig
from router.console.statistics import dashboard
from router.pipeline import compile_channel
from router.processing import Processor
from router.replay import (
    NotFinished,
    deliveries_of,
    plan_reprocess,
    plan_resend,
    reprocess,
    reprocess_many,
    resend,
    resend_many,
    superseded,
)
from router.store.database import Store
from router.store.migrate import alembic_config, upgrade
from router.store.queries import message_detail
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
    after = _one(store, deliveries, d.id == old["id"])
    assert after["status"] == "resent", "dealt with: no longer counted as failed"
    assert {k: v for k, v in after.items() if k not in ("status", "updated_at")} == {
        k: v for k, v in old.items() if k not in ("status", "updated_at")
    }
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
    with store.begin() as conn:
        conn.execute(update(deliveries).values(status="failed"))
    delivery_id = _one(store, deliveries, d.message_id == message_id)["id"]
    resend(store, delivery_id, reason="second try", actor="bob")
    with store.begin() as conn:
        audit.append(conn, "carol", "view", f"message:{message_id}", {"why": "support call"})
        audit.append(conn, "dave", "view", f"message:{message_id}", {"why": "audit"})
    ids = [e.id for e in _events(store)]
    assert len(ids) == 4
    return ids


def test_verify_passes_on_an_intact_chain(store, receive, er7):
    ids = _chain(store, receive, er7)
    with store.read() as conn:
        newest = conn.scalar(select(a.hash).where(a.id == ids[-1]))
    head = audit.Anchor(ids[-1], newest)
    assert audit.verify(store) == audit.Verdict(ok=True, events=4, head=head)
    assert audit.verify(store, head).ok


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


def test_an_anchor_catches_events_removed_from_the_end(store, receive, er7):
    """Removing the newest events leaves an intact chain behind; the anchor an earlier
    verify kept (outside the store) names what is gone."""
    ids = _chain(store, receive, er7)
    head = audit.verify(store).head
    assert head is not None and head.id == ids[-1]
    with store.begin() as conn:
        conn.execute(delete(audit_events).where(a.id.in_(ids[2:])))

    assert audit.verify(store).ok  # without the anchor, nothing shows
    verdict = audit.verify(store, head)
    assert (verdict.ok, verdict.broken_id) == (False, ids[-1])
    assert "removed from the end" in verdict.reason


def _failed(store: Store, receive: Any, er7: Any, control_id: str = "ORD1") -> tuple[int, int]:
    """A processed message whose one delivery failed: (message id, delivery id)."""
    message_id = _processed(store, receive, er7, control_id)
    with store.begin() as conn:
        conn.execute(
            update(deliveries)
            .where(d.message_id == message_id)
            .values(status="failed", attempts=1, last_error="AR")
        )
    return message_id, _one(store, deliveries, d.message_id == message_id)["id"]


def _bulk_targets(store: Store, message_ids: list[int], **options: Any) -> list[int]:
    with store.read() as conn:
        return deliveries_of(conn, message_ids, **options).ids


def test_a_resent_failure_leaves_the_failed_counts_and_the_bulk_resend(store, receive, er7):
    message_id, old = _failed(store, receive, er7)
    assert overview(store, ["orders"])[0]["failed"] == 1
    assert _bulk_targets(store, [message_id]) == [old]

    new = int(resend(store, old, reason="lab fixed", actor="bob").copy)
    with store.begin() as conn:
        conn.execute(update(deliveries).where(d.id == new).values(status="sent", attempts=1))

    (row,) = dashboard(store, ["orders"])
    assert (row["failed"], row["counts"]["failed"]["last_24h"], row["attention"]) == (0, 0, False)
    assert _bulk_targets(store, [message_id]) == [], "a bulk resend does not send it twice"
    assert _bulk_targets(store, [message_id], again=True) == [old]
    (plan,) = plan_resend(store, [old])
    assert plan.description.endswith(f"again: already resent as #{new}")
    with store.read() as conn:
        detail = message_detail(conn, message_id)
    assert [(x["id"], x["status"], x["resent_as"]) for x in detail["deliveries"]] == [
        (old, "resent", [new]),
        (new, "sent", []),
    ]


def test_a_failed_copy_is_the_one_left_to_resend(store, receive, er7):
    message_id, old = _failed(store, receive, er7)
    new = int(resend(store, old, reason="lab fixed", actor="bob").copy)
    with store.begin() as conn:
        conn.execute(update(deliveries).where(d.id == new).values(status="failed"))

    assert overview(store, ["orders"])[0]["failed"] == 1
    assert _bulk_targets(store, [message_id]) == [new]


def test_resending_a_sent_delivery_leaves_it_sent(store, receive, er7):
    message_id = _processed(store, receive, er7)
    with store.begin() as conn:
        conn.execute(update(deliveries).values(status="sent", attempts=1))
    old = _one(store, deliveries, d.message_id == message_id)

    resend(store, old["id"], reason="lab lost it", actor="bob")

    assert _one(store, deliveries, d.id == old["id"]) == old


@pytest.mark.parametrize("status", ["queued", "retrying", "sending", "held"])
def test_a_delivery_still_to_be_sent_is_not_resent(store, receive, er7, status):
    """Its copy would be a second send: the dispatcher (or a release) still sends it."""
    message_id = _processed(store, receive, er7)
    with store.begin() as conn:
        conn.execute(update(deliveries).values(status=status))
    old = _one(store, deliveries, d.message_id == message_id)

    with pytest.raises(NotFinished, match=f"delivery {old['id']} is {status}: it will still be"):
        resend(store, old["id"], reason="lab lost it", actor="bob")

    assert _one(store, deliveries, d.id == old["id"]) == old
    assert (_count(store, deliveries), _events(store)) == (1, [])
    (plan,) = plan_resend(store, [old["id"]])
    assert plan.description == (
        f"not resend delivery {old['id']} ({status}) to orders/lab: "
        "it will still be sent, so a resend would send it twice"
    )
    assert _bulk_targets(store, [message_id], status=None, again=True) == []


def test_a_bulk_resend_of_any_status_chooses_finished_deliveries(store, receive, er7):
    finished = {}
    for n, status in enumerate(["queued", "sent", "held", "failed", "resent", "cancelled"]):
        message_id, delivery_id = _failed(store, receive, er7, f"ORD{n}")
        with store.begin() as conn:
            conn.execute(update(deliveries).where(d.id == delivery_id).values(status=status))
        finished[status] = (message_id, delivery_id)
    messages_ = [message_id for message_id, _ in finished.values()]

    chosen = _bulk_targets(store, messages_, status=None)
    assert chosen == sorted(finished[s][1] for s in ("sent", "failed", "cancelled"))
    again = _bulk_targets(store, messages_, status=None, again=True)
    assert again == sorted([*chosen, finished["resent"][1]])


def test_the_migration_marks_failures_resent_before_the_upgrade(store, receive, er7):
    config = alembic_config(store.url)
    with store.writer.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "replay@-2")  # metrics_0001 is built on it
        conn.commit()
    resent_id, resent = _failed(store, receive, er7, "ORD1")
    untouched_id, untouched = _failed(store, receive, er7, "ORD2")
    new = int(resend(store, resent, reason="before the upgrade", actor="bob").copy)
    with store.begin() as conn:
        conn.execute(update(deliveries).where(d.id == resent).values(status="failed"))

    upgrade(store)

    with store.read() as conn:
        statuses = dict(conn.execute(select(d.id, d.status)).all())
    assert statuses == {resent: "resent", untouched: "failed", new: "queued"}
    assert _bulk_targets(store, [resent_id, untouched_id]) == [untouched]


def test_a_bulk_replay_larger_than_one_statement_can_bind_is_planned_whole(store, receive, er7):
    """psycopg binds at most 65,535 parameters: the CLI's bulk runs reach 100,000 ids."""
    message_id = _processed(store, receive, er7)
    with store.begin() as conn:
        conn.execute(update(deliveries).values(status="failed"))
    absent = list(range(10**9, 10**9 + 70_000))

    [planned] = plan_reprocess(store, [*absent, message_id])
    with store.read() as conn:
        failed = deliveries_of(conn, [message_id, *absent]).ids
        assert superseded(conn, [*absent, message_id]) == {}
    [resend_plan] = plan_resend(store, [*absent, *failed])

    assert planned.description == f"reprocess #{message_id} (processed) through orders"
    assert resend_plan.description.startswith(f"resend delivery {failed[0]} (failed)")


def test_a_batch_resends_in_order_with_one_chained_event_each(store, receive, er7):
    """A bulk replay's batch is one transaction; its events chain as single appends do."""
    failed = [_failed(store, receive, er7, f"ORD{n}")[1] for n in range(3)]
    chosen = [failed[2], failed[0], failed[1]]

    results = resend_many(store, chosen, reason="lab back up", actor="bob")

    assert [int(r.original) for r in results] == chosen
    copies = [int(r.copy) for r in results]
    assert copies == sorted(copies), "queued in the order given: lanes keep it"
    for old, new in zip(chosen, copies, strict=True):
        assert _one(store, deliveries, d.id == new)["resent_from"] == old
        assert _one(store, deliveries, d.id == old)["status"] == "resent"
    events = _events(store)
    assert [json.loads(e.details) for e in events] == [
        {"reason": "lab back up", "delivery": old, "new_delivery": new}
        for old, new in zip(chosen, copies, strict=True)
    ]
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert audit.verify(store).ok


def test_a_batch_is_written_whole_or_not_at_all(store, receive, er7, monkeypatch):
    failed = [_failed(store, receive, er7, f"ORD{n}")[1] for n in range(2)]
    message_id = _processed(store, receive, er7, "ORD9")
    queued = _one(store, deliveries, d.message_id == message_id)["id"]
    before = (_count(store, messages), _count(store, deliveries))

    with pytest.raises(NotFinished):
        resend_many(store, [*failed, queued], reason="x", actor="bob")
    with pytest.raises(LookupError, match="no message #999"):
        reprocess_many(store, [message_id, 999], reason="x", actor="bob")

    def crash(*args: Any) -> None:
        raise RuntimeError("the machine went down mid-batch")

    monkeypatch.setattr(audit, "append_many", crash)
    with pytest.raises(RuntimeError):
        resend_many(store, failed, reason="x", actor="bob")
    with pytest.raises(RuntimeError):
        reprocess_many(store, [message_id], reason="x", actor="bob")
    monkeypatch.undo()

    assert (_count(store, messages), _count(store, deliveries)) == before
    assert {_one(store, deliveries, d.id == i)["status"] for i in failed} == {"failed"}
    assert _events(store) == []

    done = resend_many(store, [*failed, queued], reason="x", actor="bob", skip_refused=True)
    assert [int(r.original) for r in done] == failed, "what cannot be done now is left out"
    assert len(_events(store)) == 2


def test_a_bulk_resend_run_again_skips_deliveries_it_resent_whatever_their_status(
    store, receive, er7
):
    """Only a failed delivery becomes ``resent``: a sent or cancelled one keeps its status,
    so its copy is what says a bulk resend of it was done (a retry must not send it twice)."""
    message_id, delivery_id = _failed(store, receive, er7)
    with store.begin() as conn:
        conn.execute(update(deliveries).where(d.id == delivery_id).values(status="sent"))
    assert _bulk_targets(store, [message_id], status="sent") == [delivery_id]

    resend_many(store, [delivery_id], reason="receiver lost them", actor="bob")

    assert _bulk_targets(store, [message_id], status="sent") == []
    assert _bulk_targets(store, [message_id], status=None) == []
    assert _bulk_targets(store, [message_id], status="sent", again=True) == [delivery_id]


def test_two_runs_of_one_bulk_replay_do_each_item_once(store, receive, er7):
    """Two operators (or a retry) acting on the ids one search found before either ran:
    the batch looks again under its lock, so the second finds them done."""
    message_id, _ = _failed(store, receive, er7)
    failed = _bulk_targets(store, [message_id])
    messages_ = [message_id]

    assert len(resend_many(store, failed, reason="a", actor="alice", again=False)) == 1
    assert len(reprocess_many(store, messages_, reason="a", actor="alice", again=False)) == 1
    assert resend_many(store, failed, reason="b", actor="bob", again=False) == []
    assert reprocess_many(store, messages_, reason="b", actor="bob", again=False) == []

    assert (_count(store, messages), _count(store, deliveries)) == (2, 2)
    assert [e.actor for e in _events(store)] == ["alice", "alice"]
    assert len(resend_many(store, failed, reason="c", actor="carol")) == 1, "again on purpose"


def test_two_bulk_resends_at_once_resend_each_delivery_once(store, receive, er7):
    failed = [_failed(store, receive, er7, f"ORD{n}")[1] for n in range(20)]
    start = threading.Barrier(2)
    done: list[int] = []

    def operator(name: str) -> None:
        start.wait(timeout=10)
        done.extend(
            int(r.original)
            for r in resend_many(store, failed, reason=name, actor=name, again=False)
        )

    threads = [threading.Thread(target=operator, args=(n,)) for n in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert sorted(done) == failed
    assert _count(store, deliveries) == 40
    assert audit.verify(store).ok


def test_an_action_or_target_ending_in_a_star_is_a_prefix(store):
    """``resend*`` finds resends and their repeats; ``_`` and ``%`` are letters in it, and
    case counts on SQLite as on PostgreSQL."""
    with store.begin() as conn:
        for action, target in [
            ("resend", "user:a_b"),
            ("resend.repeat", "user:axb"),
            ("reprocess", "user:a%b"),
            ("revision.approve", "channel:orders"),
        ]:
            audit.append(conn, "sam", action, target, {})

    def found(**chosen: str) -> list[tuple[str, str]]:
        with store.read() as conn:
            rows = audit.events(conn, audit.EventFilter(**chosen))
        return [(e["action"], e["target"]) for e in reversed(rows)]

    assert found(action="resend*") == [("resend", "user:a_b"), ("resend.repeat", "user:axb")]
    assert found(action="re*", target="user:a_*") == [("resend", "user:a_b")]
    assert found(target="user:a%*") == [("reprocess", "user:a%b")]
    assert found(action="RESEND*") == []
    assert found(action="resend") == [("resend", "user:a_b")], "no star: the name exactly"
    assert found(action="resend.") == []
