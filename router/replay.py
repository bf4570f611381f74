"""Replay (DESIGN.md §6): reprocess a stored message, or resend a delivery's payload.

Both keep the original and link the copy to it, need a reason, can be run dry,
and write one audit event per message. A resent ``failed`` delivery becomes
``resent`` in the same transaction that queues its copy: it has been dealt with,
so dashboards stop counting it as failed and a bulk resend does not pick it again.
Only a finished delivery is resent: one still to be sent would go out twice; nor is a
synchronous exchange's (BaRS, the booking proxy), which no dispatcher sends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, select

from router import audit
from router.replay_batch import (
    SYNCHRONOUS,
    ReplayResult,
    message_uuids,
    require_present,
    require_reason,
    rows_in,
    synchronous_of,
)
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


class SynchronousExchange(NotFinished):
    """A BaRS message forwarded, or a request proxied, while its sender waited: no
    dispatcher worker sends its destination (``forward``, ``provider``), so a copy would
    stay queued for ever; the sender, told it failed, owns the retry (docs/fhir.md). Refused
    wherever a delivery still to be sent is (exit 1, 409), before anything is resent."""

    def __init__(self, delivery_id: int, channel: str) -> None:
        Exception.__init__(
            self,
            f"delivery {delivery_id} is a synchronous exchange of {channel}: no dispatcher "
            "sends a copy of it (it would stay queued); the sender repeats the request instead",
        )
        self.delivery_id = delivery_id
        self.status = "synchronous"


# Why a bulk resend leaves a synchronous exchange's delivery out, told with their count.
SYNCHRONOUS_LEFT_OUT = (
    "synchronous exchange(s) (BaRS forward, booking proxy provider) left out: no dispatcher "
    "sends a copy of one; its sender repeats the request instead"
)


@dataclass(frozen=True)
class Chosen:
    """The deliveries a bulk resend's search chose, and how many synchronous exchanges'
    deliveries it left out (``SYNCHRONOUS_LEFT_OUT`` says why)."""

    ids: list[int]
    synchronous: int = 0


# Items a second a bulk replay makes at most by default (CLI ``--rate``; the API's bulk
# routes). The dispatcher, not this, paces what reaches a destination (``dispatch.lanes``
# at once); this keeps the queue of copies growing at a pace the engine works through.
RATE = 1000.0

# Items one transaction replays at most (the whole batch is committed, or none of it, so a
# crash midway leaves each item done or not): one commit and one read of the audit chain's
# head for the batch instead of for each item, while SQLite's one writer (ingest, the
# dispatcher) waits no longer than one batch takes, tens of milliseconds.
BATCH = 500


class Pace:
    """Batches of ``ids`` at most ``rate`` items a second (0: no limit). A batch is a tenth
    of a second's worth at that rate (at most ``BATCH``), so the progress bar moves
    smoothly and each pause is short."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.size = BATCH if rate <= 0 else max(1, min(BATCH, int(rate / 10)))
        self._started = time.monotonic()
        self._done = 0

    def batches(self, ids: list[int]) -> Iterator[list[int]]:
        for start in range(0, len(ids), self.size):
            yield ids[start : start + self.size]

    def pause(self, done: int) -> float:
        """Seconds to wait after ``done`` more items so as to keep to the rate."""
        self._done += done
        if self.rate <= 0:
            return 0.0
        return max(0.0, self._done / self.rate - (time.monotonic() - self._started))


def plan_reprocess(store: Store, message_ids: list[int]) -> list[ReplayResult]:
    m = messages.c
    with store.read() as conn:
        query = select(m.id, m.uuid, m.channel, m.status).order_by(m.id)
        rows = rows_in(conn, query, m.id, message_ids)
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
        rows = [(row.id, row.reprocessed_from) for row in rows_in(conn, query, m.id, frontier)]
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
        rows = rows_in(conn, query, m.reprocessed_from, frontier)
        for copy, original in rows:
            family[copy] = family[original]
            newest[family[copy]] = max(newest[family[copy]], copy)
        frontier = {copy for copy, _ in rows}
    return {i: newest[r] for i, r in roots.items() if newest[r] > i}


def reprocess(store: Store, message_id: int, *, reason: str, actor: str) -> ReplayResult:
    """Store a copy of the message as newly received, linked to the original. The copy is
    decided by the channel's revision when it is processed, not the original's: the result
    says which revision runs now and which settled the original."""
    return reprocess_many(store, [message_id], reason=reason, actor=actor)[0]


def reprocess_many(
    store: Store,
    message_ids: list[int],
    *,
    reason: str,
    actor: str,
    skip_refused: bool = False,
    again: bool = True,
) -> list[ReplayResult]:
    """:func:`reprocess` each of ``message_ids`` (a batch: see ``BATCH``), in order, in one
    transaction: all of them or none. An unknown id is a LookupError before anything is
    written, or with ``skip_refused`` left out. Not ``again``: a message a newer copy
    stands for is left out, as a bulk search leaves it out (:func:`superseded`), looked
    up under the batch's lock: two runs of one search (two operators, a retry) reprocess
    each message once."""
    from router.governance.revisions import running

    require_reason(reason)
    m = messages.c
    wanted = list(dict.fromkeys(message_ids))
    with store.begin() as conn:
        query = select(messages).order_by(m.id)
        found = {row.id: row for row in rows_in(conn, _locked(query, again), m.id, wanted)}
        rows = require_present(wanted, found, "message", skip_refused)
        if not again:
            newer = superseded(conn, [row.id for row in rows])
            rows = [row for row in rows if row.id not in newer]
        if not rows:
            return []
        now = utcnow()
        copies = [time_ordered_uuid() for _ in rows]
        conn.execute(
            messages.insert(),
            [_copy_of(row, uuid, now) for row, uuid in zip(rows, copies, strict=True)],
        )
        current = {channel: running(conn, channel) for channel in {row.channel for row in rows}}
        audit.append_many(
            conn,
            actor,
            "reprocess",
            [
                (
                    f"urn:tie:message:{row.uuid}",
                    {"reason": reason, "copy": f"urn:tie:message:{uuid}"},
                )
                for row, uuid in zip(rows, copies, strict=True)
            ],
        )
    return [
        ReplayResult(row.uuid, uuid, _reprocessed(row, uuid, current[row.channel]))
        for row, uuid in zip(rows, copies, strict=True)
    ]


def _copy_of(row: Any, uuid: str, now: datetime) -> dict[str, Any]:
    values = {k: v for k, v in row._mapping.items() if k not in ("id", "uuid")}
    values.update(
        uuid=uuid,
        received_at=now,
        status="received",
        error=None,
        processed_at=None,
        reprocessed_from=row.id,
        duplicate_of=None,
        revision=None,  # set by the revision that settles the copy
    )
    return values


def _reprocessed(row: Any, uuid: str, current: Any) -> str:
    through = ""
    if current is not None:
        settled = f"#{row.revision}" if row.revision is not None else "an unrecorded revision"
        through = (
            f", through {row.channel}'s running revision #{current.number}"
            f" (the original was settled by {settled})"
        )
    return f"reprocessed #{row.id} as {uuid}{through}"


def _locked(query: Select[Any], again: bool) -> Select[Any]:
    """``query`` locking its rows (PostgreSQL; SQLite has one writer at a time) when the
    batch then looks whether they were replayed already: a second run of the same search
    waits for the first's batch to commit, then sees its copies. ``FOR NO KEY UPDATE``:
    a row inserted that refers to one of them (a copy, an attempt) is not held up."""
    return query if again else query.with_for_update(key_share=True)


def plan_resend(store: Store, delivery_ids: list[int]) -> list[ReplayResult]:
    """What a resend of each delivery would do; "not resend" for one still to be sent."""
    with store.read() as conn:
        rows = _deliveries(conn, delivery_ids)
        copies = resent_as(conn, [r.id for r in rows])
        synchronous = synchronous_of(conn, rows)
        return [
            ReplayResult(str(r.id), None, _resend_plan(r, copies.get(r.id, []), synchronous))
            for r in rows
        ]


def _resend_plan(row: Any, copies: list[int], synchronous: set[int]) -> str:
    what = f"delivery {row.id} ({row.status}) to {row.channel}/{row.destination}"
    if row.status not in FINISHED:
        return f"not resend {what}: it will still be sent, so a resend would send it twice"
    if row.id in synchronous:
        return f"not resend {what}: a synchronous exchange; the sender repeats the request"
    return f"resend {what}{_again(copies)}"


def _refusal(row: Any, synchronous: set[int]) -> NotFinished | None:
    """Why the delivery ``row`` cannot be resent, if it cannot."""
    if row.status not in FINISHED:
        return NotFinished(row.id, row.status)
    if row.id in synchronous:
        return SynchronousExchange(row.id, row.channel)
    return None


def _again(copies: list[int]) -> str:
    if not copies:
        return ""
    return f" again: already resent as {', '.join(f'#{c}' for c in copies)}"


def resent_as(conn: Connection, delivery_ids: list[int]) -> dict[int, list[int]]:
    """Each delivery's resent copies, oldest first (only deliveries that have any)."""
    d = deliveries.c
    found: dict[int, list[int]] = {}
    query = select(d.resent_from, d.id).order_by(d.id)
    for old, new in rows_in(conn, query, d.resent_from, delivery_ids):
        found.setdefault(old, []).append(new)
    return found


def resend(store: Store, delivery_id: int, *, reason: str, actor: str) -> ReplayResult:
    """Queue the finished delivery's payload again, as sent, with its original idempotency
    key. Raises :class:`NotFinished` for one still to be sent (it would go twice)."""
    return resend_many(store, [delivery_id], reason=reason, actor=actor)[0]


def resend_many(
    store: Store,
    delivery_ids: list[int],
    *,
    reason: str,
    actor: str,
    skip_refused: bool = False,
    again: bool = True,
) -> list[ReplayResult]:
    """:func:`resend` each of ``delivery_ids`` (a batch: see ``BATCH``), in order, in one
    transaction: all of them or none. An unknown id (LookupError) or one still to be sent
    (:class:`NotFinished`) is refused before anything is written, or with ``skip_refused``
    left out. Not ``again``: a delivery already resent is left out, as a bulk search leaves
    it out (:func:`deliveries_of`), looked up under the batch's lock: two runs of one
    search (two operators, a retry) resend each delivery once."""
    require_reason(reason)
    d = deliveries.c
    wanted = list(dict.fromkeys(delivery_ids))
    now = utcnow()
    with store.begin() as conn:
        query = select(deliveries).order_by(d.id)
        found = {row.id: row for row in rows_in(conn, _locked(query, again), d.id, wanted)}
        rows = require_present(wanted, found, "delivery", skip_refused)
        if not again:
            copied = resent_as(conn, [row.id for row in rows])
            rows = [r for r in rows if r.status != "resent" and r.id not in copied]
        synchronous = synchronous_of(conn, rows)
        refused = [x for x in (_refusal(r, synchronous) for r in rows) if x is not None]
        if refused and not skip_refused:
            raise refused[0]
        rows = [r for r in rows if _refusal(r, synchronous) is None]
        if not rows:
            return []
        inserted = conn.execute(
            deliveries.insert().returning(d.id, sort_by_parameter_order=True),
            [_resent_copy(row, now) for row in rows],
        )
        new_ids = list(inserted.scalars())
        old_ids = [row.id for row in rows]
        conn.execute(
            deliveries.update()
            .where(d.id.in_(old_ids), d.status == "failed")
            .values(status="resent", updated_at=now)
        )
        uuids = message_uuids(conn, rows)
        audit.append_many(
            conn,
            actor,
            "resend",
            [
                (
                    f"urn:tie:message:{uuids[row.message_id]}",
                    {"reason": reason, "delivery": row.id, "new_delivery": new_id},
                )
                for row, new_id in zip(rows, new_ids, strict=True)
            ],
        )
    return [
        ReplayResult(str(row.id), str(new_id), f"resent delivery {row.id} as {new_id}")
        for row, new_id in zip(rows, new_ids, strict=True)
    ]


def _resent_copy(row: Any, now: datetime) -> dict[str, Any]:
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
    return values


def delivery_exists(conn: Connection, delivery_id: int) -> bool:
    return conn.scalar(select(deliveries.c.id).where(deliveries.c.id == delivery_id)) is not None


def unfinished(conn: Connection, delivery_ids: list[int]) -> list[NotFinished]:
    """Why each of ``delivery_ids`` that is still to be sent, or a synchronous exchange,
    cannot be resent, by id: a bulk resend checks them all before it resends any."""
    d = deliveries.c
    query = select(d.id, d.status, d.channel, d.destination, d.message_id).order_by(d.id)
    rows = rows_in(conn, query.where(d.status.not_in(FINISHED)), d.id, delivery_ids)
    query = query.where(d.status.in_(FINISHED), d.destination.in_(list(SYNCHRONOUS)))
    named = rows_in(conn, query, d.id, delivery_ids)
    rows = sorted([*rows, *named], key=lambda r: r.id)
    synchronous = synchronous_of(conn, named)
    return [x for x in (_refusal(r, synchronous) for r in rows) if x is not None]


def _deliveries(conn: Connection, ids: list[int]) -> list[Any]:
    return rows_in(conn, select(deliveries).order_by(deliveries.c.id), deliveries.c.id, ids)


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
) -> Chosen:
    """Ids of the messages' deliveries in ``status`` (to ``destination``), for bulk resend,
    and the count of synchronous exchanges' deliveries left out (the sender repeats those).

    Without a status, any finished one: one still to be sent would go twice. A delivery
    already resent is only chosen ``again`` on purpose: its copy already went. A failed one
    says so by its status (``resent``); a sent or cancelled one keeps its status, so its
    copy says it, and the same bulk resend run twice (a retry after a crash) does it once.
    """
    chosen = {status} if status else set(FINISHED) - {"resent"}
    if again:
        chosen.add("resent")
    d = deliveries.c
    query = select(d.id, d.message_id, d.destination).where(d.status.in_(sorted(chosen)))
    if destination:
        query = query.where(d.destination == destination)
    rows = rows_in(conn, query, d.message_id, message_ids)
    synchronous = synchronous_of(conn, rows)  # the sender repeats those: never resent
    chosen_ids = [row.id for row in rows if row.id not in synchronous]
    if not again:
        copied = resent_as(conn, chosen_ids)
        chosen_ids = [i for i in chosen_ids if i not in copied]
    return Chosen(sorted(chosen_ids), len(synchronous))
