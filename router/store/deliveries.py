"""Delivery queue operations: claim with a lease, record attempts, release leases.

Claims run in one write transaction. On PostgreSQL the rows are taken with
``FOR UPDATE SKIP LOCKED`` so several engine nodes can share a queue; for an
ordered lane only a node that locks the lane's head may take the lane.

A claim and a round's settling run once per round of sends, so their statements are
written once here and go straight to the driver, as the processor's settle does:
SQLAlchemy built, compiled (an expanding ``IN`` per round size) and bound them afresh
every round, which cost more than the queries. The pending statuses are spelled out in
the SQL, which lets SQLite use the partial index ``ix_deliveries_pending`` (a bound list
of statuses cannot be proved to match the index's condition).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, update

from router.config import RetryPolicy
from router.connectors import Delivery, SendResult
from router.store.blobs import BlobStore
from router.store.database import Store, Transact, savepoint
from router.store.fast_insert import driver_time, insert_rows
from router.store.inbound import utcnow
from router.store.schema import PENDING, attempts, deliveries

log = logging.getLogger(__name__)
d = deliveries.c
# Told, in the transaction that settles them, a channel and the ids of its deliveries sent
# or failed for good (so a DPS job follows its file to DPS and its outputs).
OnSettled = Callable[[Connection, str, list[int]], None]
# Told, in the transaction that fails them, a channel and its deliveries failed for good
# (a MESH non-delivery report's).
OnFailed = OnSettled


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


@dataclass(frozen=True)
class ClaimRequest:
    """What one destination's worker claims each round (the arguments of ``claim``)."""

    channel: str
    destination: str
    ordered: bool
    lanes: int
    limit: int
    lease: float
    owner: str


class _Sql:
    """One statement, written once with ``:name`` parameters, as each driver takes it."""

    def __init__(self, sql: str, postgresql: str | None = None) -> None:
        self.sqlite = sql
        self.postgresql = re.sub(r":(\w+)", r"%(\1)s", postgresql or sql)

    def rows(self, conn: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """The statement's rows, run in ``conn``'s transaction."""
        driver = conn.connection.driver_connection
        if conn.dialect.name == "sqlite":
            return driver.execute(self.sqlite, params).fetchall()
        with driver.cursor() as cursor:
            cursor.execute(self.postgresql, params)
            return cursor.fetchall()


def _pending(alias: str) -> str:
    """The pending statuses as literals (SQLite proves its partial index's condition only so)."""
    statuses = ", ".join(f"'{s}'" for s in PENDING)
    return f"{alias}status IN ({statuses})"


_MINE = f"d.channel = :channel AND d.destination = :destination AND {_pending('d.')}"
_DUE = (
    "((d.status IN ('queued', 'retrying') AND d.next_attempt_at <= :now)"
    " OR (d.status = 'sending' AND (d.lease_until IS NULL OR d.lease_until < :now)))"
)
# Each lane's head: the first pending delivery of each ordering key (unaliased, so that
# SQLite matches the partial index's condition). The heads' rows are then read by id: SQLite
# computes an IN list once; PostgreSQL is given the ids as an array, computed once, because
# it may plan ``id IN (heads)`` as a nested loop computing the heads again for each pending
# delivery (estimating one row of each, as before a big queue is ever analysed): 7 minutes
# at 100% CPU for 30,000 queued.
_HEADS = (
    "SELECT min(id) FROM deliveries WHERE channel = :channel AND destination = :destination"
    f" AND {_pending('')} GROUP BY ordering_key"
)
_IS_HEAD = {"sqlite": f"d.id IN ({_HEADS})", "postgresql": f"d.id = ANY(ARRAY({_HEADS}))"}
# In the order ``_delivery`` reads them (``Delivery``'s fields first).
_COLUMNS = (
    "d.id, d.message_id, m.uuid, d.channel, d.destination, d.payload, d.content_type,"
    " d.ordering_key, d.idempotency_key, d.attempts, d.blob_sha256, d.blob_size, d.headers,"
    " d.address"
)
_KEY = 7  # ordering_key
_FROM = "FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id"
_LOCK = " FOR UPDATE OF d SKIP LOCKED"
_LANE_HEADS = {
    dialect: f"SELECT {_COLUMNS} {_FROM} WHERE {is_head} AND {_DUE} ORDER BY d.id LIMIT :n"
    for dialect, is_head in _IS_HEAD.items()
}
_CLAIM_HEADS = {
    False: _Sql(_LANE_HEADS["sqlite"]),
    True: _Sql(_LANE_HEADS["postgresql"] + _LOCK),
}
# A lane's run behind its head, each row with whether it is due (the run stops at one that
# is not).
_LANE_RUN = _Sql(
    f"SELECT {_COLUMNS}, CASE WHEN {_DUE} THEN 1 ELSE 0 END {_FROM}"
    f" WHERE {_MINE} AND d.ordering_key = :key AND d.id > :after ORDER BY d.id LIMIT :n"
)
_ANY_DUE = f"SELECT {_COLUMNS} {_FROM} WHERE {_MINE} AND {_DUE} ORDER BY d.id LIMIT :n"
_CLAIM_ANY = {False: _Sql(_ANY_DUE), True: _Sql(_ANY_DUE + _LOCK)}
_DUE_AT = "min(CASE WHEN d.status = 'sending' THEN d.lease_until ELSE d.next_attempt_at END)"
_NEXT_DUE = {
    False: _Sql(f"SELECT {_DUE_AT} FROM deliveries AS d WHERE {_MINE}"),
    True: _Sql(
        f"SELECT {_DUE_AT} FROM deliveries AS d WHERE {_IS_HEAD['sqlite']}",
        f"SELECT {_DUE_AT} FROM deliveries AS d WHERE {_IS_HEAD['postgresql']}",
    ),
}
# Settling checks the lease in the UPDATE itself: only the lease's holder settles.
_SETTLE_SQLITE = (
    "UPDATE deliveries SET status = :status, attempts = :attempts, next_attempt_at = :next,"
    " last_error = :error, lease_until = NULL, lease_owner = NULL, updated_at = :now"
    " WHERE id = :id AND lease_owner = :owner AND status = 'sending'"
)
# PostgreSQL: the whole round in one statement, one round trip.
_SETTLE_PG = (
    "UPDATE deliveries AS d SET status = u.status, attempts = u.attempts,"
    " next_attempt_at = u.next, last_error = u.error, lease_until = NULL, lease_owner = NULL,"
    " updated_at = %(now)s FROM unnest(%(id)s::bigint[], %(status)s::text[],"
    " %(attempts)s::integer[], %(next)s::timestamptz[], %(error)s::text[])"
    " AS u(id, status, attempts, next, error)"
    " WHERE d.id = u.id AND d.lease_owner = %(owner)s AND d.status = 'sending'"
)


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
    request = ClaimRequest(channel, destination, ordered, lanes, limit, lease, owner)
    return claim_next(store, request, transact=transact)


def claim_next(
    store: Store, request: ClaimRequest, *, transact: Transact[Any] | None = None
) -> Claimed:
    """``claim`` for a worker that keeps its ``ClaimRequest``."""
    return (transact or store.run)(lambda conn: _claim(conn, request, store.blobs))


def _claim(conn: Connection, request: ClaimRequest, blobs: BlobStore) -> Claimed:
    """``claim``'s work in ``conn``'s transaction."""
    now = utcnow()
    dialect = conn.dialect.name
    lock = dialect == "postgresql"
    params = {
        "channel": request.channel,
        "destination": request.destination,
        "now": driver_time(dialect, now),
    }
    if request.ordered:
        per_lane = max(1, request.limit // request.lanes)
        picked = _claim_lanes(conn, params, request.lanes, per_lane, lock)
    else:
        picked = [[row] for row in _CLAIM_ANY[lock].rows(conn, {**params, "n": request.limit})]
    if not picked:
        return Claimed(next_due=_next_due(conn, params, request.ordered))
    until = driver_time(dialect, now + timedelta(seconds=request.lease))
    _lease(conn, [row[0] for lane in picked for row in lane], until, request.owner)
    return Claimed(lanes=[[_delivery(row, blobs) for row in lane] for lane in picked])


def _claim_lanes(
    conn: Connection, params: dict[str, Any], lanes: int, per_lane: int, lock: bool
) -> list[list[tuple[Any, ...]]]:
    """The first ``lanes`` due lane heads in one query (locked, skipping heads another node
    holds), then each lane's due run behind its head."""
    picked = []
    for head in _CLAIM_HEADS[lock].rows(conn, {**params, "n": lanes}):
        lane = [head]
        if per_lane > 1:
            run = {**params, "key": head[_KEY], "after": head[0], "n": per_lane - 1}
            for row in _LANE_RUN.rows(conn, run):
                if not row[-1]:
                    break
                lane.append(row)
        picked.append(lane)
    return picked


def _next_due(conn: Connection, params: dict[str, Any], ordered: bool) -> datetime | None:
    """When the earliest waiting delivery (for an ordered destination: lane head) falls due."""
    value = _NEXT_DUE[ordered].rows(conn, params)[0][0]
    if value is None:
        return None
    if isinstance(value, str):  # SQLite keeps UtcDateTime as UTC text
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _lease(conn: Connection, ids: list[int], until: Any, owner: str) -> None:
    driver = conn.connection.driver_connection
    sql = "UPDATE deliveries SET status = 'sending', lease_until = ?, lease_owner = ? WHERE id"
    if conn.dialect.name == "sqlite":
        driver.execute(f"{sql} IN ({', '.join('?' * len(ids))})", (until, owner, *ids))
        return
    with driver.cursor() as cursor:
        cursor.execute(f"{sql.replace('?', '%s')} = ANY(%s)", (until, owner, ids))


def _delivery(row: tuple[Any, ...], blobs: BlobStore) -> Delivery:
    """A claimed row (``_COLUMNS``) as the senders take it."""
    sha256, size, headers, address = row[10:14]
    return Delivery(
        *row[:10],
        blob=blobs.payload(b"", sha256, size) if sha256 else None,
        headers=json.loads(headers) if headers else None,
        address=address,
    )


def record(
    store: Store,
    done: list[Attempt],
    policy: RetryPolicy,
    claimed: list[int],
    *,
    owner: str,
    transact: Transact[Any] | None = None,
    on_settled: OnSettled | None = None,
) -> list[str]:
    """Write every attempt and settle its delivery; release claimed ones never attempted.

    Every attempt is kept, but a delivery is settled only while ``owner`` still holds
    its lease: if the lease ran out and another node took the delivery over, that
    node's outcome stands. ``transact`` runs the transaction (default: one of its own).
    Returns each attempt's outcome (sent, retrying, failed), for the metrics.
    """
    settle, outcomes = _settling(done, policy, claimed, owner, on_settled)
    (transact or store.run)(settle)
    return outcomes


def record_then_claim(
    store: Store,
    done: list[Attempt],
    policy: RetryPolicy,
    claimed: list[int],
    request: ClaimRequest,
    *,
    transact: Transact[Any] | None = None,
    on_settled: OnSettled | None = None,
) -> tuple[list[str], Claimed]:
    """``record`` a round and ``claim`` the next in one transaction: for a worker that
    already knows more is due, one commit (one writer job on SQLite) instead of two.

    The claim runs in a savepoint: if it fails, the round's attempts are still recorded
    (every attempt is kept) and the next round is empty, to be claimed again later.
    """
    settle, outcomes = _settling(done, policy, claimed, request.owner, on_settled)

    def work(conn: Connection) -> Claimed:
        settle(conn)
        try:
            with savepoint(conn, "tie_claim"):
                return _claim(conn, request, store.blobs)
        except Exception:
            log.exception(
                "claiming the next round of %s/%s failed; this round is recorded",
                request.channel,
                request.destination,
            )
            return Claimed()

    return outcomes, (transact or store.run)(work)


def renew(
    store: Store,
    ids: list[int],
    *,
    lease: float,
    owner: str,
    transact: Transact[Any] | None = None,
) -> set[int]:
    """Extend ``owner``'s leases on ``ids`` to ``lease`` seconds from now; the ids it still
    holds (a lease that ran out and was taken over by another node is not taken back)."""

    def work(conn: Connection) -> set[int]:
        rows = conn.execute(
            update(deliveries)
            .where(d.id.in_(ids), d.lease_owner == owner, d.status == "sending")
            .values(lease_until=utcnow() + timedelta(seconds=lease))
            .returning(d.id)
        )
        return {row[0] for row in rows}

    return (transact or store.run)(work)


def _settling(
    done: list[Attempt],
    policy: RetryPolicy,
    claimed: list[int],
    owner: str,
    on_settled: OnSettled | None = None,
) -> tuple[Callable[[Connection], None], list[str]]:
    """``record``'s work for a transaction, and the attempts' outcomes."""
    now = utcnow()
    attempt_rows, updates = [], []
    by_channel: dict[str, list[int]] = {}  # sent or failed for good
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
        if status in ("sent", "failed"):
            by_channel.setdefault(a.delivery.channel, []).append(a.delivery.id)
        updates.append(
            {
                "id": a.delivery.id,
                "status": status,
                "attempts": number,
                "next": now + timedelta(seconds=_retry_delay(policy, number, a.result))
                if status == "retrying"
                else now,
                "error": a.result.error,
            }
        )
    untried = sorted(set(claimed) - {a.delivery.id for a in done})

    def work(conn: Connection) -> None:
        insert_rows(conn, attempts, attempt_rows)
        if updates:
            settled = _settle(conn, updates, owner, now)
            if settled < len(updates):
                log.warning(
                    "leases on %d of deliveries %s ran out before their results came in",
                    len(updates) - settled,
                    [u["id"] for u in updates],
                )
        if on_settled is not None:
            for channel, ids in by_channel.items():
                # It checks their status: a lost lease settles nothing.
                on_settled(conn, channel, ids)
        if untried:
            _release(conn, and_(d.id.in_(untried), d.lease_owner == owner))

    return work, [row["outcome"] for row in attempt_rows]


def _settle(conn: Connection, updates: list[dict[str, Any]], owner: str, now: datetime) -> int:
    """Settle the attempted deliveries whose lease ``owner`` still holds; how many it did."""
    driver = conn.connection.driver_connection
    if conn.dialect.name == "sqlite":
        when = driver_time("sqlite", now)
        rows = [
            {**u, "next": driver_time("sqlite", u["next"]), "owner": owner, "now": when}
            for u in updates
        ]
        return driver.executemany(_SETTLE_SQLITE, rows).rowcount
    columns = {key: [u[key] for u in updates] for key in updates[0]}
    with driver.cursor() as cursor:
        cursor.execute(_SETTLE_PG, {**columns, "owner": owner, "now": now})
        return cursor.rowcount


def _retry_delay(policy: RetryPolicy, number: int, result: SendResult) -> float:
    """The backoff, unless the receiver said when to come back (never sooner than the minimum)."""
    if result.retry_after is None:
        return policy.delay(number)
    return max(policy.backoff[0], result.retry_after)


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
