"""Each destination's queue as ``/metrics`` reports it (its depth and oldest delivery), its
deliveries failed for good and not resent, and each channel's backlog of messages not yet
processed.

The oldest pending delivery of a destination is its lowest id: ids are given in insert
order and every delivery is inserted with ``created_at`` set to the time of that insert's
transaction (processing, the FHIR exchange, a resend); release from a hold or a retry
changes neither. So the grouped count and ``min(id)`` are read from the pending index
alone (the dispatcher's ``ix_deliveries_pending``, whose predicate implies the status
filter; SQLite proves a partial index's condition only from literals, not parameters),
and ``created_at`` from one row per destination, not from every queued row.

Where ids and ``created_at`` can disagree: transactions writing at once (PostgreSQL, several
nodes) take their ids in insert order but their times a little before, so the lowest id
may be milliseconds younger than the oldest; and a clock stepped back breaks the order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, literal_column, select, text

from router.store.schema import PENDING, deliveries


class Queue(NamedTuple):
    channel: str
    destination: str
    depth: int
    oldest: datetime


def literal(value: str) -> Any:
    """``value`` written into the SQL, not bound: SQLite uses a partial index only when it
    can prove the index's condition from the query's literals."""
    return literal_column("'" + value.replace("'", "''") + "'")


def pending_queues(conn: Connection) -> list[Queue]:
    """Depth and oldest ``created_at`` per (channel, destination) with pending deliveries."""
    d = deliveries.c
    heads = (
        select(d.channel, d.destination, func.count().label("depth"), func.min(d.id).label("head"))
        .where(d.status.in_([literal(s) for s in PENDING]))
        .group_by(d.channel, d.destination)
        .subquery("heads")
    )
    query = select(heads.c.channel, heads.c.destination, heads.c.depth, d.created_at)
    return [
        Queue(*row)
        for row in conn.execute(query.join_from(heads, deliveries, d.id == heads.c.head))
    ]


def failed_deliveries(conn: Connection) -> dict[tuple[str, str], int]:
    """Deliveries ``failed`` (retries used up, not resent: a resend makes the original
    ``resent``) per (channel, destination), from the partial index of failed deliveries:
    they stay until someone resends them, so they pile up over months, never counted from
    their rows."""
    d = deliveries.c
    query = (
        select(d.channel, d.destination, func.count())
        .where(d.status == literal("failed"))
        .group_by(d.channel, d.destination)
    )
    return {(channel, destination): n for channel, destination, n in conn.execute(query)}


# SQLite's statistics cannot tell that few messages wait: it read a covering index of every
# message instead. INDEXED BY fails loudly if the index cannot be used.
_UNPROCESSED = (
    "SELECT channel, count(*) FROM messages {hint}WHERE status = 'received' GROUP BY channel"
)


def unprocessed(conn: Connection) -> dict[str, int]:
    """Messages still ``received`` per channel (a paused channel's backlog), from a partial
    index of the unprocessed messages, not from every message of the channel."""
    sqlite = conn.dialect.name == "sqlite"
    hint = "INDEXED BY ix_messages_received_by_channel " if sqlite else ""
    return {channel: count for channel, count in conn.execute(text(_UNPROCESSED.format(hint=hint)))}
