"""Replay (DESIGN.md §6): reprocess a stored message, or resend a delivery's payload.

Both keep the original and link the copy to it, need a reason, can be run dry,
and write one audit event per message. A resent ``failed`` delivery becomes
``resent`` in the same transaction that queues its copy: it has been dealt with,
so dashboards stop counting it as failed and a bulk resend does not pick it again.
Only a finished delivery is resent: one still to be sent would go out twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, Select, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from router import audit
from router.store.database import Store
from router.store.inbound import time_ordered_uuid, utcnow
from router.store.queries import MessageFilter, search_query
from router.store.schema import deliveries, messages

# The delivery statuses a resend accepts: the dispatcher is done with these. A ``queued``,
# ``retrying``, ``sending`` or ``held`` delivery will still be sent, so its copy would be
# a second send of the same payload.
FINISHED = ("failed", "sent", "resent", "cancelled")


class NotFinished(Exception):
    """The delivery will still be sent: resending it would send its payload twice."""

    def __init__(self, delivery_id: int, status: str) -> None:
        super().__init__(
            f"delivery {delivery_id} is {status}: it will still be sent, so a resend would "
            f"send it twice (resend only a {', '.join(FINISHED[:-1])} or {FINISHED[-1]} one)"
        )
        self.delivery_id = delivery_id
        self.status = status


@dataclass(frozen=True)
class ReplayResult:
    original: str
    copy: str | None
    description: str


# Ids bound in one statement: psycopg sends at most 65,535 parameters, and a bulk replay
# from the CLI reaches 100,000 messages (and more deliveries).
IDS_A_STATEMENT = 10_000


def _rows_in(conn: Connection, query: Select[Any], column: Any, ids: Iterable[int]) -> list[Any]:
    """``query``'s rows where ``column`` is one of ``ids``, asked in parts small enough to
    bind in one statement (ids sorted, so a query ordered by ``column`` stays ordered).

    PostgreSQL takes them all as one array: an IN list is rendered and bound one
    placeholder an id, which cost a 10,000-message dry run seconds of client CPU."""
    ordered = sorted(set(ids))
    if conn.dialect.name == "postgresql":
        every = bindparam("ids", ordered, type_=ARRAY(BigInteger))
        return list(conn.execute(query.where(column == any_(every))))
    return [
        row
        for start in range(0, len(ordered), IDS_A_STATEMENT)
        for row in conn.execute(query.where(column.in_(ordered[start : start + IDS_A_STATEMENT])))
    ]


def plan_reprocess(store: Store, message_ids: list[int]) -> list[ReplayResult]:
    m = messages.c
    with store.read() as conn:
        query = select(m.id, m.uuid, m.channel, m.status).order_by(m.id)
        rows = _rows_in(conn, query, m.id, message_ids)
        newer = superseded(conn, [r.id for r in rows])
        return [
            ReplayResult(
                r.uuid,
                None,
                f"reprocess #{r.id} ({r.status}) through {r.channel}"
                + (f" again: already reprocessed as #{newer[r.id]}" if r.id in newer else ""),
            )
            for r in rows
        ]


def superseded(conn: Connection, message_ids: list[int]) -> dict[int, int]:
    """Each of ``message_ids`` that a newer reprocessed copy stands for: id -> that copy.

    A message's family is its original and every copy (copies of copies too); only the
    newest member is the current one. An original's status is final, so a search by
    status finds it (and any older copy) again after it was reprocessed: the family's
    newest member says it has been dealt with. Copies are always newer than their
    originals, so the search down is a range of ids.
    """
    m = messages.c
    parent: dict[int, int] = {}
    frontier = set(message_ids)
    while frontier:
        query = select(m.id, m.reprocessed_from).where(m.reprocessed_from.is_not(None))
        rows = [(row.id, row.reprocessed_from) for row in _rows_in(conn, query, m.id, frontier)]
        parent.update(rows)
        frontier = {original for _, original in rows} - parent.keys()

    def root(message_id: int) -> int:
        while message_id in parent:
            message_id = parent[message_id]
        return message_id

    roots = {message_id: root(message_id) for message_id in message_ids}
    newest = {r: r for r in roots.values()}
    family = dict(newest)  # member -> its root
    frontier = set(newest)
    lowest = min(frontier, default=0)
    while frontier:
        query = select(m.id, m.reprocessed_from).where(m.id > lowest)
        rows = _rows_in(conn, query, m.reprocessed_from, frontier)
        for copy, original in rows:
            family[copy] = family[original]
            newest[family[copy]] = max(newest[family[copy]], copy)
        frontier = {copy for copy, _ in rows}
    return {i: newest[r] for i, r in roots.items() if newest[r] > i}


def reprocess(store: Store, message_id: int, *, reason: str, actor: str) -> ReplayResult:
    """Store a copy of the message as newly received, linked to the original. The copy is
    decided by the channel's revision when it is processed, not the original's: the result
    says which revision runs now and which settled the original."""
    from router.governance.revisions import running

    _require_reason(reason)
    with store.begin() as conn:
        row = conn.execute(select(messages).where(messages.c.id == message_id)).first()
        if row is None:
            raise LookupError(f"no message #{message_id}")
        copy_uuid = time_ordered_uuid()
        values = {k: v for k, v in row._mapping.items() if k not in ("id", "uuid")}
        values.update(
            uuid=copy_uuid,
            received_at=utcnow(),
            status="received",
            error=None,
            processed_at=None,
            reprocessed_from=row.id,
            duplicate_of=None,
            revision=None,  # set by the revision that settles the copy
        )
        conn.execute(messages.insert().values(**values))
        current = running(conn, row.channel)
        audit.append(
            conn,
            actor,
            "reprocess",
            f"urn:tie:message:{row.uuid}",
            {"reason": reason, "copy": f"urn:tie:message:{copy_uuid}"},
        )
    through = ""
    if current is not None:
        settled = f"#{row.revision}" if row.revision is not None else "an unrecorded revision"
        through = (
            f", through {row.channel}'s running revision #{current.number}"
            f" (the original was settled by {settled})"
        )
    return ReplayResult(row.uuid, copy_uuid, f"reprocessed #{row.id} as {copy_uuid}{through}")


def plan_resend(store: Store, delivery_ids: list[int]) -> list[ReplayResult]:
    """What a resend of each delivery would do; "not resend" for one still to be sent."""
    with store.read() as conn:
        rows = _deliveries(conn, delivery_ids)
        copies = resent_as(conn, [r.id for r in rows])
        return [ReplayResult(str(r.id), None, _resend_plan(r, copies.get(r.id, []))) for r in rows]


def _resend_plan(row: Any, copies: list[int]) -> str:
    what = f"delivery {row.id} ({row.status}) to {row.channel}/{row.destination}"
    if row.status not in FINISHED:
        return f"not resend {what}: it will still be sent, so a resend would send it twice"
    return f"resend {what}{_again(copies)}"


def _again(copies: list[int]) -> str:
    if not copies:
        return ""
    return f" again: already resent as {', '.join(f'#{c}' for c in copies)}"


def resent_as(conn: Connection, delivery_ids: list[int]) -> dict[int, list[int]]:
    """Each delivery's resent copies, oldest first (only deliveries that have any)."""
    d = deliveries.c
    found: dict[int, list[int]] = {}
    query = select(d.resent_from, d.id).order_by(d.id)
    for old, new in _rows_in(conn, query, d.resent_from, delivery_ids):
        found.setdefault(old, []).append(new)
    return found


def resend(store: Store, delivery_id: int, *, reason: str, actor: str) -> ReplayResult:
    """Queue the finished delivery's payload again, as sent, with its original idempotency
    key. Raises :class:`NotFinished` for one still to be sent (it would go twice)."""
    _require_reason(reason)
    now = utcnow()
    with store.begin() as conn:
        rows = _deliveries(conn, [delivery_id])
        if not rows:
            raise LookupError(f"no delivery {delivery_id}")
        row = rows[0]
        if row.status not in FINISHED:
            raise NotFinished(row.id, row.status)
        values = {k: v for k, v in row._mapping.items() if k != "id"}
        # A delivery that was held goes back on hold (its destination's open batch):
        # a resend never bypasses release approval (docs/governance.md).
        held = row.hold_batch_id is not None
        values.update(
            status="held" if held else "queued",
            hold_batch_id=None,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
            lease_owner=None,
            created_at=now,
            updated_at=now,
            last_error=None,
            resent_from=row.id,
        )
        new_id = conn.execute(deliveries.insert().values(**values)).inserted_primary_key[0]
        conn.execute(
            deliveries.update()
            .where(deliveries.c.id == row.id, deliveries.c.status == "failed")
            .values(status="resent", updated_at=now)
        )
        uuid = conn.scalar(select(messages.c.uuid).where(messages.c.id == row.message_id))
        audit.append(
            conn,
            actor,
            "resend",
            f"urn:tie:message:{uuid}",
            {"reason": reason, "delivery": row.id, "new_delivery": new_id},
        )
    return ReplayResult(str(row.id), str(new_id), f"resent delivery {row.id} as {new_id}")


def delivery_exists(conn: Connection, delivery_id: int) -> bool:
    return conn.scalar(select(deliveries.c.id).where(deliveries.c.id == delivery_id)) is not None


def unfinished(conn: Connection, delivery_ids: list[int]) -> list[NotFinished]:
    """Why each of ``delivery_ids`` that is still to be sent cannot be resent, by id: a bulk
    resend checks them all before it resends any."""
    d = deliveries.c
    query = select(d.id, d.status).where(d.status.not_in(FINISHED)).order_by(d.id)
    return [NotFinished(row.id, row.status) for row in _rows_in(conn, query, d.id, delivery_ids)]


def _deliveries(conn: Connection, ids: list[int]) -> list[Any]:
    return _rows_in(conn, select(deliveries).order_by(deliveries.c.id), deliveries.c.id, ids)


def _require_reason(reason: str) -> None:
    if not reason or not reason.strip():
        raise ValueError("a reason is required")


def matching_messages(conn: Connection, f: MessageFilter) -> list[int]:
    """Ids of the messages a search finds (at most ``f.limit``), oldest first, for bulk replay."""
    return sorted(conn.scalars(search_query(f, conn.dialect.name, (messages.c.id,))))


def deliveries_of(
    conn: Connection,
    message_ids: list[int],
    *,
    status: str | None = "failed",
    destination: str | None = None,
    again: bool = False,
) -> list[int]:
    """Ids of the messages' deliveries in ``status`` (to ``destination``), for bulk resend.

    Without a status, any finished one: one still to be sent would go twice. A
    ``resent`` delivery is only chosen ``again`` on purpose: its copy already went.
    """
    chosen = {status} if status else set(FINISHED) - {"resent"}
    if again:
        chosen.add("resent")
    d = deliveries.c
    query = select(d.id).where(d.status.in_(sorted(chosen)))
    if destination:
        query = query.where(d.destination == destination)
    return sorted(row.id for row in _rows_in(conn, query, d.message_id, message_ids))
