"""Delivery queue operations: claim with a lease, record attempts, release leases.

Claims run in one write transaction. On PostgreSQL the rows are taken with
``FOR UPDATE SKIP LOCKED`` so several engine nodes can share a queue; for an
ordered lane only a node that locks the lane's head may take the lane.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, or_, select, update

from router.config import RetryPolicy
from router.connectors import Delivery, SendResult
from router.store.blobs import BlobStore
from router.store.database import Store, Transact
from router.store.fast_insert import insert_rows
from router.store.ingest import utcnow
from router.store.schema import PENDING, attempts, deliveries, messages

log = logging.getLogger(__name__)
d = deliveries.c


@dataclass
class Claimed:
    lanes: list[list[Delivery]] = field(default_factory=list)
    next_due: datetime | None = None

    @property
    def all_ids(self) -> list[int]:
        return [x.id for lane in self.lanes for x in lane]


@dataclass(frozen=True)
class Attempt:
    delivery: Delivery
    result: SendResult
    started_at: datetime
    duration_ms: float


def _due(now: datetime) -> Any:
    return or_(
        and_(d.status.in_(("queued", "retrying")), d.next_attempt_at <= now),
        and_(d.status == "sending", or_(d.lease_until.is_(None), d.lease_until < now)),
    )


def _is_due(row: Any, now: datetime) -> bool:
    if row.status == "sending":
        return row.lease_until is None or row.lease_until < now
    return row.status in ("queued", "retrying") and row.next_attempt_at <= now


_COLUMNS = (
    d.id,
    d.message_id,
    messages.c.uuid,
    d.channel,
    d.destination,
    d.payload,
    d.blob_sha256,
    d.blob_size,
    d.headers,
    d.address,
    d.content_type,
    d.ordering_key,
    d.idempotency_key,
    d.attempts,
    d.status,
    d.next_attempt_at,
    d.lease_until,
)


def _select(*where: Any) -> Any:
    return select(*_COLUMNS).join(messages, messages.c.id == d.message_id).where(*where)


def claim(
    store: Store,
    channel: str,
    destination: str,
    *,
    ordered: bool,
    lanes: int,
    limit: int,
    lease: float,
    owner: str,
    transact: Transact[Any] | None = None,
) -> Claimed:
    """Lease due deliveries of one destination: lanes in order, or any due ones.

    ``transact`` runs the claim's transaction (default: one of its own).
    """
    now = utcnow()
    lock = store.dialect == "postgresql"
    mine = (d.channel == channel, d.destination == destination, d.status.in_(PENDING))

    def work(conn: Connection) -> Claimed:
        if ordered:
            picked = _claim_lanes(conn, mine, now, lanes, max(1, limit // lanes), lock)
        else:
            query = _select(*mine, _due(now)).order_by(d.id).limit(limit)
            rows = conn.execute(
                query.with_for_update(skip_locked=True, of=deliveries) if lock else query
            )
            picked = [[row] for row in rows]
        if not picked:
            return Claimed(next_due=_next_due(conn, mine, ordered))
        ids = [row.id for lane in picked for row in lane]
        conn.execute(
            update(deliveries)
            .where(d.id.in_(ids))
            .values(status="sending", lease_until=now + timedelta(seconds=lease), lease_owner=owner)
        )
        return Claimed(lanes=[[_delivery(row, store.blobs) for row in lane] for lane in picked])

    return (transact or store.run)(work)


def _next_due(conn: Connection, mine: tuple[Any, ...], ordered: bool) -> datetime | None:
    """When the earliest waiting delivery (for an ordered destination: lane head) falls due."""
    due_at = case((d.status == "sending", d.lease_until), else_=d.next_attempt_at)
    query = select(func.min(due_at)).where(*mine)
    if ordered:
        heads = select(func.min(d.id)).where(*mine).group_by(d.ordering_key)
        query = query.where(d.id.in_(heads))
    return conn.scalar(query)


def _claim_lanes(
    conn: Connection, mine: tuple[Any, ...], now: datetime, lanes: int, per_lane: int, lock: bool
) -> list[list[Any]]:
    """The first ``lanes`` due lane heads in one query (locked, skipping heads another node
    holds), then each lane's due run behind its head."""
    heads = select(func.min(d.id)).where(*mine).group_by(d.ordering_key).correlate(None)
    query = _select(d.id.in_(heads), _due(now)).order_by(d.id).limit(lanes)
    picked: list[list[Any]] = []
    for head in conn.execute(
        query.with_for_update(skip_locked=True, of=deliveries) if lock else query
    ).all():
        rest = conn.execute(
            _select(*mine, d.ordering_key == head.ordering_key, d.id > head.id)
            .order_by(d.id)
            .limit(per_lane - 1)
        )
        lane = [head]
        for row in rest:
            if not _is_due(row, now):
                break
            lane.append(row)
        picked.append(lane)
    return picked


def _delivery(row: Any, blobs: BlobStore) -> Delivery:
    return Delivery(
        id=row.id,
        message_id=row.message_id,
        message_uuid=row.uuid,
        channel=row.channel,
        destination=row.destination,
        payload=row.payload,
        content_type=row.content_type,
        ordering_key=row.ordering_key,
        idempotency_key=row.idempotency_key,
        attempts=row.attempts,
        blob=blobs.payload(b"", row.blob_sha256, row.blob_size) if row.blob_sha256 else None,
        headers=json.loads(row.headers) if row.headers else None,
        address=row.address,
    )


def record(
    store: Store,
    done: list[Attempt],
    policy: RetryPolicy,
    claimed: list[int],
    *,
    owner: str,
    transact: Transact[Any] | None = None,
) -> list[str]:
    """Write every attempt and settle its delivery; release claimed ones never attempted.

    Every attempt is kept, but a delivery is settled only while ``owner`` still holds
    its lease: if the lease ran out and another node took the delivery over, that
    node's outcome stands. ``transact`` runs the transaction (default: one of its own).
    Returns each attempt's outcome (sent, retrying, failed), for the metrics.
    """
    now = utcnow()
    attempt_rows, updates = [], []
    for a in done:
        number = a.delivery.attempts + 1
        outcome = a.result.outcome
        status = {"sent": "sent", "fail": "failed"}.get(outcome, "retrying")
        if status == "retrying" and number >= policy.max_attempts:
            status = "failed"
        attempt_rows.append(
            {
                "delivery_id": a.delivery.id,
                "number": number,
                "started_at": a.started_at,
                "duration_ms": a.duration_ms,
                "outcome": status,
                "response": a.result.response,
                "error": a.result.error,
            }
        )
        updates.append(
            {
                "_id": a.delivery.id,
                "_status": status,
                "_attempts": number,
                "_next": now + timedelta(seconds=_retry_delay(policy, number, a.result))
                if status == "retrying"
                else now,
                "_error": a.result.error,
            }
        )
    untried = sorted(set(claimed) - {a.delivery.id for a in done})

    def work(conn: Connection) -> None:
        _log_failures(attempt_rows)
        insert_rows(conn, attempts, attempt_rows)
        if updates:
            settled = conn.execute(
                update(deliveries)
                .where(d.id == bindparam("_id"), d.lease_owner == owner, d.status == "sending")
                .values(
                    status=bindparam("_status"),
                    attempts=bindparam("_attempts"),
                    next_attempt_at=bindparam("_next"),
                    last_error=bindparam("_error"),
                    lease_until=None,
                    lease_owner=None,
                    updated_at=now,
                ),
                updates,
            ).rowcount
            if settled < len(updates):
                log.warning(
                    "leases on %d of deliveries %s ran out before their results came in",
                    len(updates) - settled,
                    [u["_id"] for u in updates],
                )
        if untried:
            _release(conn, and_(d.id.in_(untried), d.lease_owner == owner))

    (transact or store.run)(work)
    return [row["outcome"] for row in attempt_rows]


def _retry_delay(policy: RetryPolicy, number: int, result: SendResult) -> float:
    """The backoff, unless the receiver said when to come back (never sooner than the minimum)."""
    if result.retry_after is None:
        return policy.delay(number)
    return max(policy.backoff[0], result.retry_after)


def _log_failures(attempt_rows: list[dict[str, Any]]) -> None:
    for row in attempt_rows:
        if row["outcome"] == "failed":
            log.error(
                "delivery %s failed after %s attempt(s): %s",
                row["delivery_id"],
                row["number"],
                row["error"],
            )
        elif row["outcome"] == "retrying":
            log.warning(
                "delivery %s attempt %s will be retried: %s",
                row["delivery_id"],
                row["number"],
                row["error"],
            )


def _release(conn: Connection, where: Any) -> int:
    """Make leased deliveries due again without counting an attempt."""
    result = conn.execute(
        update(deliveries)
        .where(where, d.status == "sending")
        .values(
            status=case((d.attempts == 0, "queued"), else_="retrying"),
            lease_until=None,
            lease_owner=None,
        )
    )
    return result.rowcount


def release_owned(store: Store, owner: str) -> int:
    """After a restart, this node's leases belong to sends that died with it."""
    with store.begin() as conn:
        return _release(conn, d.lease_owner == owner)
