"""Processed outcomes written to the store: the one transaction of a batch (DESIGN.md §3.2).

Each message is settled (processed, filtered or error) if it is still ``received``, its
correlation keys go in, its local destinations (the DPS ``job``) are applied, and its
deliveries and flags are inserted, all in the caller's transaction: a crash before the
commit means the batch is processed again on restart, a crash after it means never again.
Messages of declarative channels arrive settled already (stored with their outcome by the
group-commit writer): ``record_decided`` adds their keys, deliveries and flags.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, update

from router.config import UnmatchedFlag
from router.local_destinations import LocalRoutes, apply_local, in_lock_order
from router.payload import as_payload
from router.pipeline import Outcome, PlannedDelivery
from router.store.database import VALUE_REFUSED, savepoint
from router.store.fast_insert import driver_time, insert_rows
from router.store.flags import unmatched_flags
from router.store.inbound import utcnow
from router.store.ingest import DestinationKey
from router.store.schema import correlations, deliveries, message_flags, messages

log = logging.getLogger(__name__)

# Statements built once: building one and computing its cache key costs more than running it.
_m = messages.c
_SETTLE = (
    update(messages)
    .where(_m.id.in_(bindparam("ids", expanding=True)), _m.status == "received")
    .values(
        status=bindparam("outcome"),
        error=bindparam("reason"),
        processed_at=bindparam("now"),
        revision=bindparam("revision"),
    )
    .returning(_m.id)
)
_SETTLE_SQL = (
    "UPDATE messages SET status = ?, error = ?, processed_at = ?, revision = ?"
    " WHERE status = 'received'"
)
_INSERT_FLAGS = message_flags.insert()


class Stored(NamedTuple):
    """What writing an outcome needs of its message's row."""

    id: int
    channel: str


def record_decided(
    conn: Connection,
    settled: Sequence[tuple[Stored, Outcome]],
    unmatched: dict[str, UnmatchedFlag] | None = None,
) -> set[DestinationKey]:
    """Keys, deliveries and flags of messages stored already settled; the destinations
    given queued deliveries."""
    _insert_keys(conn, settled)
    return _record(conn, settled, utcnow(), unmatched)


def _write(
    conn: Connection,
    outcomes: list[tuple[Any, Outcome]],
    unmatched: dict[str, UnmatchedFlag] | None = None,
    local: LocalRoutes | None = None,
) -> set[DestinationKey]:
    """Settle messages, insert their keys, apply local destinations, insert deliveries, flag
    results with no known order; rows settled elsewhere meanwhile are skipped. The keys go
    first: a local destination looks them up (a DPS job's answer earlier in the batch)."""
    now = utcnow()
    settled = _settle(conn, outcomes, now)
    _insert_keys(conn, settled)
    if local:
        todo = [(r, o) for r, o in settled if o.status == "processed" and r.channel in local]
        for row, outcome in in_lock_order(todo, local):
            apply_local(conn, row.id, outcome, local[row.channel])
    return _record(conn, settled, now, unmatched)


def write_outcomes(
    conn: Connection,
    outcomes: list[tuple[Any, Outcome]],
    unmatched: dict[str, UnmatchedFlag] | None = None,
    local: LocalRoutes | None = None,
) -> set[DestinationKey]:
    """``_write`` as one batch; when the store refuses a value of the batch (a mapping's
    content type too long for its column), each message on its own, and the one whose
    outcome it refuses an ``error`` with the reason: a poison message must not hold up every
    message behind it, round after round. Any other failure (the store is down) raises:
    the round is retried."""
    try:
        with savepoint(conn, "tie_batch"):
            return _write(conn, outcomes, unmatched, local)
    except VALUE_REFUSED:
        log.exception("the store refused a value of %d outcome(s); one at a time", len(outcomes))
    touched: set[DestinationKey] = set()
    for row, outcome in outcomes:
        try:
            with savepoint(conn, "tie_one"):
                touched |= _write(conn, [(row, outcome)], unmatched, local)
        except VALUE_REFUSED as exc:
            log.exception("message %s: the store refused its outcome", row.id)
            reason = f"the store refused its outcome: {type(exc).__name__}: {exc}"[:2000]
            _write(conn, [(row, Outcome("error", reason, revision=outcome.revision))], unmatched)
    return touched


def _record(
    conn: Connection,
    settled: Sequence[tuple[Any, Outcome]],
    now: datetime,
    unmatched: dict[str, UnmatchedFlag] | None = None,
) -> set[DestinationKey]:
    """Insert settled messages' deliveries and flags (their keys are in already); the
    destinations given queued deliveries."""
    delivery_rows = [
        _delivery_row(row, d, now) for row, outcome in settled for d in outcome.deliveries
    ]
    insert_rows(conn, deliveries, delivery_rows)
    flags = [(flag, row.id) for row, outcome in settled for flag in outcome.flags]
    if unmatched:
        processed = [
            (row.id, row.channel, outcome.correlations)
            for row, outcome in settled
            if outcome.status == "processed"
        ]
        flags += unmatched_flags(conn, processed, unmatched)
    if flags:
        rows = [{"flag": flag, "message_id": mid} for flag, mid in dict.fromkeys(flags)]
        conn.execute(_INSERT_FLAGS, rows)
    return {(r["channel"], r["destination"]) for r in delivery_rows if r["status"] == "queued"}


def _insert_keys(conn: Connection, settled: Sequence[tuple[Any, Outcome]]) -> None:
    """Insert settled messages' correlation keys."""
    key_rows = [
        {"message_id": row.id, "key": key, "value": value}
        for row, outcome in settled
        for key, value in dict.fromkeys(outcome.correlations)
    ]
    insert_rows(conn, correlations, key_rows)


def _settle(
    conn: Connection, outcomes: list[tuple[Any, Outcome]], now: datetime
) -> list[tuple[Any, Outcome]]:
    """Set each message's outcome if it is still ``received``; the outcomes that were set.

    One UPDATE per distinct status, reason and revision (usually one for the whole batch). The
    ``received`` check skips a message another processor settled meanwhile: SQLite reads
    the batch outside the write lock, PostgreSQL has the rows locked already.
    """
    groups: dict[tuple[str, str | None, int | None], list[int]] = {}
    for row, outcome in outcomes:
        groups.setdefault((outcome.status, outcome.reason, outcome.revision), []).append(row.id)
    done: set[int] = set()
    for (status, reason, revision), ids in groups.items():
        done.update(_settle_ids(conn, ids, status, reason, revision, now))
    return [(row, outcome) for row, outcome in outcomes if row.id in done]


def _settle_ids(
    conn: Connection,
    ids: list[int],
    status: str,
    reason: str | None,
    revision: int | None,
    now: datetime,
) -> list[int]:
    """One settle UPDATE, straight through the driver on SQLite and PostgreSQL: SQLAlchemy
    compiles the expanding ``IN`` list for every batch size, which cost more than the update."""
    driver = conn.connection.driver_connection
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(ids))
        sql = f"{_SETTLE_SQL} AND id IN ({marks}) RETURNING id"
        when = driver_time("sqlite", now)
        params = (status, reason, when, revision, *ids)
        return [r[0] for r in driver.execute(sql, params).fetchall()]
    if conn.dialect.name == "postgresql":
        with driver.cursor() as cursor:
            cursor.execute(
                f"{_SETTLE_SQL.replace('?', '%s')} AND id = ANY(%s) RETURNING id",
                (status, reason, now, revision, ids),
            )
            return [r[0] for r in cursor.fetchall()]
    params = {"ids": ids, "outcome": status, "reason": reason, "now": now, "revision": revision}
    return list(conn.scalars(_SETTLE, params))


def _status(planned: PlannedDelivery) -> str:
    if planned.failure:
        return "failed"
    if planned.applied:
        return "sent"
    return "held" if planned.held else "queued"


def _delivery_row(row: Any, planned: Any, now: datetime) -> dict[str, Any]:
    body = as_payload(planned.payload)
    return {
        "message_id": row.id,
        "channel": row.channel,
        "destination": planned.destination,
        "status": _status(planned),
        "last_error": planned.failure,
        "content_type": planned.content_type,
        "payload": body.inline,
        "blob_sha256": body.sha256 if body.is_blob else None,
        "blob_size": body.size if body.is_blob else None,
        "headers": json.dumps(planned.headers) if planned.headers else None,
        "address": planned.address,
        "hold_labels": json.dumps(planned.labels) if planned.labels else None,
        "ordering_key": planned.ordering_key,
        "idempotency_key": planned.idempotency_key,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
