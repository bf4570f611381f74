"""Message flags: facts processing found about a message, stored beside it and searchable.

The one flag so far is a channel's ``unmatched`` check: a result (ORU^R01) whose placer
order number no order (OML^O21) of the named channels carries is flagged
``unmatched-order`` in the same transaction that settles it. The flag records what was
known then: an order that arrives later does not clear it (reprocess the result to
check again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from router.store.schema import correlations, message_flags, messages

if TYPE_CHECKING:
    from router.config import UnmatchedFlag

c = correlations.c

# A processed message as the check needs it: (id, channel, correlation keys).
Settled = tuple[int, str, list[tuple[str, str]]]


def unmatched_flags(
    conn: Connection, settled: Iterable[Settled], checks: Mapping[str, UnmatchedFlag]
) -> list[tuple[str, int]]:
    """(flag, message id) for each settled message of a checked channel whose key no message
    of the check's channels carries. One query per check, by index."""
    pending: dict[int, tuple[UnmatchedFlag, set[str]]] = {}
    for message_id, channel, keys in settled:
        check = checks.get(channel)
        if check is not None:
            pending[message_id] = (check, {v for k, v in keys if k == check.key})
    if not pending:
        return []
    known: dict[int, set[str]] = {}
    for check in {id(ch): ch for ch, _ in pending.values()}.values():
        values = set().union(*(v for ch, v in pending.values() if ch is check))
        known[id(check)] = _carried(conn, check, values) if values else set()
    return [
        (check.flag, message_id)
        for message_id, (check, values) in pending.items()
        if not values & known[id(check)]
    ]


def _carried(conn: Connection, check: UnmatchedFlag, values: set[str]) -> set[str]:
    """Which of ``values`` some message of the check's channels carries as its key."""
    query = (
        select(c.value)
        .join(messages, messages.c.id == c.message_id)
        .where(
            c.value.in_(sorted(values)),
            c.key == check.key,
            messages.c.channel.in_(check.channels),
        )
        .distinct()
    )
    return set(conn.scalars(query))


def flags_of(conn: Connection, message_id: int) -> list[str]:
    query = select(message_flags.c.flag).where(message_flags.c.message_id == message_id)
    return sorted(conn.scalars(query))
