"""Pausing and resuming a channel's processing (the "post office" switch).

A paused channel still receives and stores every message, so nothing is lost;
the processor leaves its messages ``received`` until it is resumed, then takes
the backlog in receive order. The state lives in the store, so it survives a
restart and applies to every engine node.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from router import audit
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.queues import pending_queues, unprocessed
from router.store.schema import channel_state, deliveries
from router.store.upsert import upsert


def set_paused(store: Store, channel: str, paused: bool, *, actor: str, reason: str = "") -> None:
    """Record the switch and an audit event in one transaction."""
    switch = {"channel": channel, "paused": paused, "updated_at": utcnow(), "updated_by": actor}
    with store.begin() as conn:
        upsert(conn, channel_state, switch, key=("channel",))
        audit.append(
            conn, actor, "pause" if paused else "resume", f"channel:{channel}", {"reason": reason}
        )


def overview(store: Store, channels: list[str]) -> list[dict[str, Any]]:
    """Per channel: paused or not, messages waiting to be processed, its queue (depth and
    oldest pending delivery) and its failed, held and cancelled deliveries.

    Each figure is read through an index, bounded by what it counts, never by the store:
    the backlog and queues from the partial indexes of unprocessed messages and pending
    deliveries, the others from (channel, status, updated_at), channels and statuses named.
    """
    d = deliveries.c
    with store.read() as conn:
        switches = {r.channel: r for r in conn.execute(select(channel_state))}
        backlog = unprocessed(conn)
        queues = pending_queues(conn)
        by_status = {
            (r.channel, r.status): r.n
            for r in conn.execute(
                select(d.channel, d.status, func.count().label("n"))
                .where(d.channel.in_(channels), d.status.in_(("failed", "held", "cancelled")))
                .group_by(d.channel, d.status)
            )
        }
    return [
        {
            "channel": name,
            "paused": bool(switches[name].paused) if name in switches else False,
            "changed_by": switches[name].updated_by if name in switches else None,
            "unprocessed": backlog.get(name, 0),
            "queued": sum(q.depth for q in queues if q.channel == name),
            "oldest_queued": min((q.oldest for q in queues if q.channel == name), default=None),
            "failed": by_status.get((name, "failed"), 0),
            # Awaiting release approval (not in the queue depth), and rejected releases.
            "held": by_status.get((name, "held"), 0),
            "cancelled": by_status.get((name, "cancelled"), 0),
        }
        for name in channels
    ]
