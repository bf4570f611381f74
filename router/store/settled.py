"""Messages stored with an outcome decided on receipt, and the rules that undo it.

The group-commit writer stores a message already settled when its outcome was decided
as it was submitted (router.store.ingest). Two things take that outcome back: a paused
channel, whose messages stay ``received`` for the processor to take when it resumes,
and settled writes that failed, whose messages go back to ``received`` so that the
processor decides them again.
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


def hold_paused(conn: Connection, items: list[Inbound]) -> None:
    """A paused channel's messages stay ``received`` whatever was decided for them: the
    processor takes them when the channel resumes."""
    if not any(i.outcome is not None for i in items):
        return
    paused = paused_channels(conn)
    if paused:
        for item in items:
            if item.channel in paused:
                item.outcome = None


def unsettle(conn: Connection, items: list[Inbound]) -> None:
    """Put messages stored settled back to ``received``, for the processor to decide."""
    conn.execute(
        messages.update()
        .where(messages.c.uuid.in_([i.uuid for i in items]))
        .values(status="received", error=None, processed_at=None)
    )
    for item in items:
        item.outcome = None
