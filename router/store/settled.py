"""Messages stored with an outcome decided on receipt, and the rules that undo it.

The group-commit writer stores a message already settled when its outcome was decided
as it was submitted (router.store.ingest). Three things take that outcome back: a paused
channel, whose messages stay ``received`` for the processor to take when it resumes; a
channel with messages still ``received`` (a resumed channel's backlog, a payload too large
to decide on receipt), which a new message must not overtake; and settled writes that
failed, whose messages go back to ``received`` so that the processor decides them again.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from router.store.inbound import Inbound
from router.store.schema import channel_state, messages

_PAUSED_SQL = "SELECT channel FROM channel_state WHERE paused"
_PAUSED = select(channel_state.c.channel).where(channel_state.c.paused)


def paused_channels(conn: Connection) -> set[str]:
    """The channels paused now, as every node sees them (the switch lives in the store).
    On SQLite straight through the driver: it is read in every group commit."""
    if conn.dialect.name == "sqlite":
        return {r[0] for r in conn.connection.driver_connection.execute(_PAUSED_SQL)}
    return set(conn.scalars(_PAUSED))


_WAITING_SQL = (
    "SELECT 1 FROM messages INDEXED BY ix_messages_received_by_channel"
    " WHERE status = 'received' AND channel = ? LIMIT 1"
)


def waiting_channels(conn: Connection, channels: set[str]) -> set[str]:
    """Those of ``channels`` with messages stored but not yet processed. On SQLite, where
    the engine settles on receipt, one index seek a channel, however long another channel's
    backlog; elsewhere (a writer given a settler on PostgreSQL) a plain query."""
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        return {c for c in channels if driver.execute(_WAITING_SQL, (c,)).fetchone()}
    waiting = select(messages.c.channel).where(
        messages.c.status == "received", messages.c.channel.in_(channels)
    )
    return set(conn.scalars(waiting.distinct()))


def hold_back(conn: Connection, items: list[Inbound]) -> None:
    """Messages stay ``received``, whatever was decided for them, when their channel is
    paused (the processor takes them when it resumes) or has messages still ``received``,
    in the store or earlier in ``items``: settled now, their deliveries would be queued
    ahead of those and overtake them on an ordered destination (DESIGN.md §3.4)."""
    decided = {i.channel for i in items if i.outcome is not None}
    if not decided:
        return
    held = paused_channels(conn) | waiting_channels(conn, decided)
    for item in items:
        if item.channel in held:
            item.outcome = None
        elif item.outcome is None and item.status == "received":
            held.add(item.channel)


def unsettle(conn: Connection, items: list[Inbound]) -> None:
    """Put messages stored settled back to ``received``, for the processor to decide."""
    conn.execute(
        messages.update()
        .where(messages.c.uuid.in_([i.uuid for i in items]))
        .values(status="received", error=None, processed_at=None, revision=None)
    )
    for item in items:
        item.outcome = None
