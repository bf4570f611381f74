"""Cancelling deliveries (router/cancel.py): only what waits for the dispatcher is
cancelled, all of a batch or none, and never one the dispatcher claimed since it was read."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from router import cancel, replay
from router.store.database import Store
from router.store.deliveries import claim
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.schema import JOB_KEY, audit_events, correlations, deliveries, messages


def _delivery(
    store: Store,
    status: str,
    *,
    destination: str = "lab",
    source: dict | None = None,
    job: str | None = None,
) -> int:
    """A message of lab-orders with one delivery in ``status``."""
    item = Inbound("lab-orders", b"MSH|", status="processed", source=source or {"protocol": "mllp"})
    now = utcnow()
    with store.begin() as conn:
        write_inbound(conn, [item])
        message_id = conn.scalar(select(messages.c.id).where(messages.c.uuid == item.uuid))
        if job is not None:
            conn.execute(
                correlations.insert().values(message_id=message_id, key=JOB_KEY, value=job)
            )
        row = deliveries.insert().values(
            message_id=message_id,
            channel="lab-orders",
            destination=destination,
            status=status,
            content_type="hl7v2",
            payload=b"MSH|",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        return conn.execute(row).inserted_primary_key[0]


def _status(store: Store, delivery_id: int) -> str:
    with store.read() as conn:
        return conn.scalar(select(deliveries.c.status).where(deliveries.c.id == delivery_id))


def _cancel_events(store: Store) -> list[dict]:
    with store.read() as conn:
        query = select(audit_events.c.details).where(audit_events.c.action == "cancel")
        return list(conn.scalars(query))


def test_queued_and_retrying_deliveries_are_cancelled_and_never_claimed(store):
    queued, retrying = _delivery(store, "queued"), _delivery(store, "retrying")

    done = cancel.cancel_many(store, [queued, retrying], reason="wrong ward", actor="sam")

    assert [r.description for r in done] == [
        f"cancelled delivery {queued} (queued) to lab-orders/lab",
        f"cancelled delivery {retrying} (retrying) to lab-orders/lab",
    ]
    assert [_status(store, i) for i in (queued, retrying)] == ["cancelled", "cancelled"]
    with store.read() as conn:
        error = conn.scalar(select(deliveries.c.last_error).where(deliveries.c.id == queued))
    assert error == "cancelled by sam: wrong ward"
    assert len(_cancel_events(store)) == 2
    taken = claim(
        store, "lab-orders", "lab", ordered=True, lanes=1, limit=10, lease=30, owner="node"
    )
    assert taken.all_ids == []
    # Finished: it can be resent, on purpose.
    (copy,) = replay.resend_many(store, [queued], reason="after all", actor="sam")
    assert _status(store, int(copy.copy)) == "queued"


@pytest.mark.parametrize(
    ("status", "why"),
    [
        ("sending", "it is being sent now: try again once this attempt is recorded"),
        ("held", "it is held for release approval: reject its batch instead"),
        ("sent", "it is finished: nothing is left to stop"),
        ("failed", "it is finished: nothing is left to stop"),
    ],
)
def test_a_delivery_not_waiting_is_refused_and_a_batch_naming_it_cancels_nothing(
    store, status, why
):
    waiting, other = _delivery(store, "queued"), _delivery(store, status)

    with pytest.raises(replay.NotFinished) as refused:
        cancel.cancel_many(store, [waiting, other], reason="x", actor="sam")

    assert str(refused.value).startswith(f"delivery {other} is not cancelled ({status}): {why}")
    assert (_status(store, waiting), _status(store, other)) == ("queued", status)
    assert _cancel_events(store) == []
    plans = [r.description for r in cancel.plan_cancel(store, [waiting, other])]
    assert plans[0] == f"cancel delivery {waiting} (queued) to lab-orders/lab"
    assert plans[1].startswith(f"not cancel delivery {other} ({status}) to lab-orders/lab: ")
    skipped = cancel.cancel_many(
        store, [waiting, other], reason="x", actor="sam", skip_refused=True
    )
    assert [r.original for r in skipped] == [str(waiting)]


def test_a_dps_job_or_synchronous_delivery_is_refused_and_left_out_of_a_search(store):
    job = _delivery(store, "queued", job="job-1")
    bars = _delivery(store, "queued", destination="forward", source={"bars": {}})
    plain = _delivery(store, "retrying")

    for delivery, kind in ((job, "DPS job"), (bars, "synchronous exchange")):
        with pytest.raises(cancel.NotCancellable, match=kind):
            cancel.cancel(store, delivery, reason="x", actor="sam")
    with store.read() as conn:
        message_ids = list(conn.scalars(select(messages.c.id)))
        assert cancel.waiting_of(conn, message_ids) == [plain]


def test_a_claim_since_the_read_wins_and_the_cancel_is_refused(store, monkeypatch):
    """The update is conditional: a delivery the dispatcher took between the cancel's read
    and its write (PostgreSQL; SQLite has one writer) is refused, not half cancelled."""
    delivery = _delivery(store, "queued")
    found = cancel._refusals

    def claimed_meanwhile(conn, rows):  # type: ignore[no-untyped-def]
        refused = found(conn, rows)
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == delivery)
            .values(status="sending", lease_owner="node", lease_until=utcnow())
        )
        return refused

    monkeypatch.setattr(cancel, "_refusals", claimed_meanwhile)
    with pytest.raises(cancel.NotCancellable, match="being sent now"):
        cancel.cancel(store, delivery, reason="x", actor="sam")
    assert _status(store, delivery) == "queued"  # the cancel's transaction was rolled back
    assert _cancel_events(store) == []

    # A bulk that skips what it cannot do (the console's) leaves it to the claim.
    assert cancel.cancel_many(store, [delivery], reason="x", actor="sam", skip_refused=True) == []
    assert _status(store, delivery) == "sending"
    assert _cancel_events(store) == []


def test_an_unknown_delivery_or_no_reason_cancels_nothing(store):
    delivery = _delivery(store, "queued")
    with pytest.raises(LookupError, match="no delivery 999999"):
        cancel.cancel_many(store, [delivery, 999999], reason="x", actor="sam")
    with pytest.raises(ValueError, match="a reason is required"):
        cancel.cancel(store, delivery, reason="  ", actor="sam")
    assert _status(store, delivery) == "queued"
