"""A synchronous exchange's delivery (BaRS ``forward``, the proxy's ``provider``) is not
resent: no dispatcher worker sends those, so its copy would stay queued for ever."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from router import replay
from router.store.database import Store
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.migrate import upgrade
from router.store.schema import deliveries, messages


def _failed(store: Store, channel: str, destination: str, source: dict) -> int:
    """A message of ``channel`` from ``source`` whose delivery to ``destination`` failed."""
    item = Inbound(channel, b"{}", content_type="fhir+json", status="processed", source=source)
    now = utcnow()
    with store.begin() as conn:
        write_inbound(conn, [item])
        message_id = conn.scalar(select(messages.c.id).where(messages.c.uuid == item.uuid))
        row = deliveries.insert().values(
            message_id=message_id,
            channel=channel,
            destination=destination,
            status="failed",
            content_type="fhir+json",
            payload=b"{}",
            attempts=1,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            last_error="could not be reached",
        )
        return conn.execute(row).inserted_primary_key[0]


def test_a_synchronous_exchange_is_refused_and_left_out_of_a_bulk_resend(store_url):
    store = Store(store_url)
    upgrade(store)
    try:
        bars = _failed(store, "bars-referrals", "forward", {"protocol": "http", "bars": {}})
        proxied = _failed(
            store, "booking-proxy", "provider", {"protocol": "http", "method": "POST"}
        )
        # A queued channel may name its own destination "forward": that one is resent.
        mllp = _failed(store, "lab-orders", "forward", {"protocol": "mllp"})
        with store.read() as conn:
            before = conn.scalar(select(func.count()).select_from(deliveries))
            message_ids = list(conn.scalars(select(messages.c.id)))
            assert replay.deliveries_of(conn, message_ids) == [mllp]

        for delivery in (bars, proxied):
            with pytest.raises(replay.NotFinished, match="synchronous exchange") as refused:
                replay.resend(store, delivery, reason="receiver back", actor="sam")
            assert "the sender repeats the request" in str(refused.value)
            (plan,) = replay.plan_resend(store, [delivery])
            assert plan.description.startswith(f"not resend delivery {delivery} (failed)")
        with store.read() as conn:
            assert conn.scalar(select(func.count()).select_from(deliveries)) == before
            assert [str(x) for x in replay.unfinished(conn, [bars, mllp])] == [
                str(replay.SynchronousExchange(bars, "bars-referrals"))
            ]

        (result,) = replay.resend_many(store, [mllp], reason="lab back", actor="sam")
        assert result.copy is not None
    finally:
        store.dispose()
