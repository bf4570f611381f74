"""Cancel deliveries that should not go out (a wrong message, a decommissioned receiver,
copies queued by mistake): the dispatcher then never sends them, and they stay, finished,
as ``cancelled``, with who cancelled them and why in ``last_error`` and the audit log.

Only a delivery waiting for the dispatcher (``queued``, ``retrying``) is cancelled. One
being sent now (``sending``, under a lease) is refused, "try again": its attempt's outcome
is recorded, then it may be waiting again. A ``held`` one belongs to its release approval
(reject its batch, docs/governance.md); a finished one has nothing left to stop; a
synchronous exchange's is never queued; a DPS job's would leave its job waiting for an
answer that never comes (it ends when the delivery fails for good: then close the job).
The update itself is conditional (``WHERE status IN ('queued', 'retrying')``): a claim
that took the delivery since it was read wins, and the cancel is refused, not half done.
A cancelled delivery can be resent (router/replay.py FINISHED).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from router import audit
from router.replay import NotFinished
from router.replay_batch import (
    ReplayResult,
    message_uuids,
    require_present,
    require_reason,
    rows_in,
    synchronous_of,
)
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import HELD, JOB_KEY, correlations, deliveries

# What the dispatcher has still to send and is not sending now.
CANCELLABLE = ("queued", "retrying")

_WHY = {
    "sending": "it is being sent now: try again once this attempt is recorded",
    HELD: "it is held for release approval: reject its batch instead (run.py holds reject)",
    "synchronous": "it is a synchronous exchange: no dispatcher sends it",
    "job": "it belongs to a DPS job, which would wait for ever: let it fail, then close the job",
}


class NotCancellable(NotFinished):
    """The delivery cannot be cancelled now; refused where a resend's refusal is (exit 1,
    409), before anything is cancelled."""

    def __init__(self, delivery_id: int, status: str) -> None:
        why = _WHY.get(status, "it is finished: nothing is left to stop")
        Exception.__init__(self, f"delivery {delivery_id} is not cancelled ({status}): {why}")
        self.delivery_id = delivery_id
        self.status = status


def cancel(store: Store, delivery_id: int, *, reason: str, actor: str) -> ReplayResult:
    """Cancel one delivery waiting to be sent; :class:`NotCancellable` if it is not."""
    return cancel_many(store, [delivery_id], reason=reason, actor=actor)[0]


def cancel_many(
    store: Store,
    delivery_ids: list[int],
    *,
    reason: str,
    actor: str,
    skip_refused: bool = False,
) -> list[ReplayResult]:
    """Cancel each of ``delivery_ids`` (a batch) in one transaction: all or none. An unknown
    id (LookupError) or one that cannot be cancelled (:class:`NotCancellable`, also one the
    dispatcher claimed meanwhile) is refused before anything is written, or left out with
    ``skip_refused``. One audit event ``cancel`` a delivery."""
    require_reason(reason)
    d = deliveries.c
    wanted = list(dict.fromkeys(delivery_ids))
    now = utcnow()
    with store.begin() as conn:
        query = select(deliveries).order_by(d.id)
        found = {row.id: row for row in rows_in(conn, query, d.id, wanted)}
        rows = require_present(wanted, found, "delivery", skip_refused)
        refused = _refusals(conn, rows)
        if refused and not skip_refused:
            raise refused[0]
        ids = [r.id for r in rows if r.id not in {x.delivery_id for x in refused}]
        if not ids:
            return []
        changed = set(
            conn.scalars(
                update(deliveries)
                .where(d.id.in_(ids), d.status.in_(CANCELLABLE))
                .values(
                    status="cancelled", last_error=f"cancelled by {actor}: {reason}", updated_at=now
                )
                .returning(d.id)
            )
        )
        if len(changed) < len(ids) and not skip_refused:
            # Claimed (or cancelled) since read: refused, and the transaction rolled back.
            late = next(i for i in ids if i not in changed)
            raise NotCancellable(late, conn.scalar(select(d.status).where(d.id == late)))
        done = [found[i] for i in ids if i in changed]
        if not done:
            return []
        uuids = message_uuids(conn, done)
        audit.append_many(
            conn,
            actor,
            "cancel",
            [
                (f"urn:tie:message:{uuids[r.message_id]}", {"reason": reason, "delivery": r.id})
                for r in done
            ],
        )
    return [ReplayResult(str(r.id), None, f"cancelled {_what(r)}") for r in done]


def plan_cancel(store: Store, delivery_ids: list[int]) -> list[ReplayResult]:
    """What a cancel of each delivery would do; "not cancel" with why for one refused."""
    with store.read() as conn:
        rows = rows_in(
            conn, select(deliveries).order_by(deliveries.c.id), deliveries.c.id, delivery_ids
        )
        refused = {x.delivery_id: x for x in _refusals(conn, rows)}
    return [
        ReplayResult(
            str(r.id),
            None,
            f"not cancel {_what(r)}: {_WHY.get(refused[r.id].status, 'it is finished')}"
            if r.id in refused
            else f"cancel {_what(r)}",
        )
        for r in rows
    ]


def refusals(conn: Connection, delivery_ids: list[int]) -> list[NotCancellable]:
    """Why each of ``delivery_ids`` that cannot be cancelled cannot, by id: a bulk cancel
    by ids checks them all before it cancels any."""
    query = select(deliveries).order_by(deliveries.c.id)
    return _refusals(conn, rows_in(conn, query, deliveries.c.id, delivery_ids))


def waiting_of(
    conn: Connection, message_ids: list[int], *, destination: str | None = None
) -> list[int]:
    """Ids of the messages' deliveries a cancel by search takes: those still to be sent by
    the dispatcher (to ``destination``), less a synchronous exchange's or a DPS job's. One
    being sent now is taken, so that the cancel refuses it by name (try again) rather than
    pass over it in silence."""
    d = deliveries.c
    query = select(deliveries).where(d.status.in_((*CANCELLABLE, "sending"))).order_by(d.id)
    if destination:
        query = query.where(d.destination == destination)
    rows = rows_in(conn, query, d.message_id, message_ids)
    refused = {x.delivery_id for x in _refusals(conn, rows) if x.status != "sending"}
    return sorted(r.id for r in rows if r.id not in refused)


def _refusals(conn: Connection, rows: list[Any]) -> list[NotCancellable]:
    """Why each of the delivery ``rows`` that cannot be cancelled cannot, in their order."""
    waiting = [r for r in rows if r.status in CANCELLABLE]
    synchronous = synchronous_of(conn, waiting)
    jobs = _of_jobs(conn, [r.message_id for r in waiting if r.id not in synchronous])
    refused = []
    for r in rows:
        if r.status not in CANCELLABLE:
            refused.append(NotCancellable(r.id, r.status))
        elif r.id in synchronous:
            refused.append(NotCancellable(r.id, "synchronous"))
        elif r.message_id in jobs:
            refused.append(NotCancellable(r.id, "job"))
    return refused


def _of_jobs(conn: Connection, message_ids: list[int]) -> set[int]:
    """Which of ``message_ids`` belong to a DPS job (they carry its correlation key)."""
    c = correlations.c
    query = select(c.message_id).where(c.key == JOB_KEY)
    return {row.message_id for row in rows_in(conn, query, c.message_id, message_ids)}


def _what(row: Any) -> str:
    return f"delivery {row.id} ({row.status}) to {row.channel}/{row.destination}"
