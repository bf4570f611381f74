"""Which of a channel's messages retention may remove, what they hold, and removing them.

DESIGN.md §5: retention is per channel and never removes queued, held or failed work. A
message may go once it is older than the channel keeps messages and settled (processed or
filtered: never received, validating or error, which still need someone), none of its
deliveries is pending, held or failed, no ServiceRequest in the registry points at it (the
registry is the requests' current state, not history) and the DPS job it started (keyed by
its UUID) is not still in progress, nor has an output (a CSV file, the summary email)
still to be sent, unless support closed it. With it go its deliveries, their attempts and
MESH records, its correlation keys and its flags, its finished DPS job, and each decided
hold batch (with its approvals) none of whose deliveries is left. A later message reprocessed
from it, or recognised as its repeat, stays and loses only that link. The audit log is
never touched: it keeps every reprocess, hold request, approval and release.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, exists, func, select, update

from router.store.schema import (
    BATCH_DECIDED,
    HELD,
    JOB_FINAL,
    JOB_KEY,
    PENDING,
    attempts,
    correlations,
    deliveries,
    hold_approvals,
    hold_batches,
    jobs,
    mesh_sent,
    message_flags,
    messages,
    service_requests,
)

SETTLED = ("processed", "filtered")
UNFINISHED_DELIVERY = (*PENDING, HELD, "failed")
m, d, a = messages.c, deliveries.c, attempts.c


@dataclass
class Removed:
    """What one removal took away; ``blobs`` are the payload hashes its rows named."""

    messages: int = 0
    deliveries: int = 0
    attempts: int = 0
    jobs: int = 0
    batches: int = 0
    blobs: set[str] = field(default_factory=set)


def _removable(channel: str, before: datetime) -> ColumnElement[bool]:
    """The store's newest message and the message of its newest delivery stay: SQLite gives
    a new row the highest id plus one, so removing them would give their ids to the next
    rows, and a retried channel delivery would find the message fed from its namesake."""
    newest = select(func.max(messages.alias().c.id)).scalar_subquery()
    newest_delivery = select(func.max(deliveries.alias().c.id)).scalar_subquery()
    unfinished = exists().where(d.message_id == m.id, d.status.in_(UNFINISHED_DELIVERY))
    registered = exists().where(service_requests.c.message_id == m.id)
    job_running = exists().where(jobs.c.job_id == m.uuid, jobs.c.status.not_in(JOB_FINAL))
    # A completed job whose results' outputs are still to be sent may yet fail them; a job
    # support closed is settled whatever its outputs (their messages keep their own).
    outputs = deliveries.alias("outputs").c
    c = correlations.c
    outputs_unsent = exists().where(
        c.value == m.uuid,
        c.key == JOB_KEY,
        outputs.message_id == c.message_id,
        outputs.status.in_(UNFINISHED_DELIVERY),
        ~exists().where(jobs.c.job_id == m.uuid, jobs.c.status == "closed"),
    )
    return (
        (m.channel == channel)
        & m.status.in_(SETTLED)
        & (m.received_at < before)
        & ~unfinished
        & ~registered
        & ~job_running
        & ~outputs_unsent
        & (m.id < newest)
        & ~exists().where(d.message_id == m.id, d.id == newest_delivery)
    )


def removable_ids(conn: Connection, channel: str, before: datetime, limit: int) -> list[int]:
    """The oldest ``limit`` messages of ``channel`` retention may remove, by id."""
    query = select(m.id).where(_removable(channel, before)).order_by(m.id).limit(limit)
    return list(conn.scalars(query))


def count_removable(conn: Connection, channel: str, before: datetime) -> int:
    return conn.scalar(select(func.count()).where(_removable(channel, before))) or 0


def archive_records(conn: Connection, ids: list[int]) -> list[dict[str, Any]]:
    """Each message of ``ids`` whole, as one JSON-ready record: its row, its deliveries with
    their attempts, its correlation keys, its flags and its DPS job. Payloads are text when they are
    UTF-8 (``raw``, ``payload``, ``response``), else base64 (``..._base64``); a payload kept
    as a blob is named by its hash (``blob_sha256``)."""
    rows = conn.execute(select(messages).where(m.id.in_(ids)).order_by(m.id)).mappings()
    records = {
        r["id"]: {"message": _plain(r), "deliveries": [], "keys": [], "flags": [], "job": None}
        for r in rows
    }
    by_delivery: dict[int, dict[str, Any]] = {}
    for row in conn.execute(select(deliveries).where(d.message_id.in_(ids)).order_by(d.id)):
        delivery = _plain(row._mapping) | {"attempts": []}
        by_delivery[row.id] = delivery
        records[row.message_id]["deliveries"].append(delivery)
    if by_delivery:
        query = select(attempts).where(a.delivery_id.in_(list(by_delivery))).order_by(a.id)
        for row in conn.execute(query):
            by_delivery[row.delivery_id]["attempts"].append(_plain(row._mapping))
    keys = select(correlations).where(correlations.c.message_id.in_(ids))
    for row in conn.execute(keys):
        records[row.message_id]["keys"].append({"key": row.key, "value": row.value})
    for row in conn.execute(select(message_flags).where(message_flags.c.message_id.in_(ids))):
        records[row.message_id]["flags"].append(row.flag)
    by_uuid = {record["message"]["uuid"]: record for record in records.values()}
    for row in conn.execute(select(jobs).where(jobs.c.job_id.in_(list(by_uuid)))):
        by_uuid[row.job_id]["job"] = _plain(row._mapping)
    return list(records.values())


def remove(conn: Connection, channel: str, before: datetime, ids: list[int]) -> Removed:
    """Remove those of ``ids`` that retention may still remove (one may have been resent or
    reprocessed since it was chosen), with everything that is theirs."""
    ids = list(conn.scalars(select(m.id).where(m.id.in_(ids), _removable(channel, before))))
    if not ids:
        return Removed()
    theirs = select(d.id).where(d.message_id.in_(ids)).scalar_subquery()
    blobs = set(
        conn.scalars(select(m.blob_sha256).where(m.id.in_(ids), m.blob_sha256.is_not(None)))
    )
    blobs |= set(
        conn.scalars(select(d.blob_sha256).where(d.message_id.in_(ids), d.blob_sha256.is_not(None)))
    )
    uuids = list(conn.scalars(select(m.uuid).where(m.id.in_(ids))))
    batch_ids = list(
        conn.scalars(
            select(d.hold_batch_id).where(d.message_id.in_(ids), d.hold_batch_id.is_not(None))
        ).unique()
    )
    for link in (m.reprocessed_from, m.duplicate_of):
        conn.execute(
            update(messages).where(link.in_(ids), m.id.not_in(ids)).values({link.name: None})
        )
    conn.execute(
        update(deliveries)
        .where(d.resent_from.in_(theirs), d.message_id.not_in(ids))
        .values(resent_from=None)
    )
    removed_attempts = conn.execute(delete(attempts).where(a.delivery_id.in_(theirs))).rowcount
    conn.execute(delete(mesh_sent).where(mesh_sent.c.delivery_id.in_(theirs)))
    removed_deliveries = conn.execute(delete(deliveries).where(d.message_id.in_(ids))).rowcount
    conn.execute(delete(correlations).where(correlations.c.message_id.in_(ids)))
    conn.execute(delete(message_flags).where(message_flags.c.message_id.in_(ids)))
    removed = conn.execute(delete(messages).where(m.id.in_(ids))).rowcount
    finished_jobs = jobs.c.job_id.in_(uuids) & jobs.c.status.in_(JOB_FINAL)
    removed_jobs = conn.execute(delete(jobs).where(finished_jobs)).rowcount
    return Removed(
        removed,
        removed_deliveries,
        removed_attempts,
        removed_jobs,
        _remove_emptied_batches(conn, batch_ids),
        blobs,
    )


def _remove_emptied_batches(conn: Connection, batch_ids: list[int]) -> int:
    """Remove the decided hold batches of ``batch_ids`` none of whose deliveries is left,
    with their approvals; a pending batch stays, even empty, until someone decides it, and
    so does the newest (its id, in the audit log's ``hold:<id>``, is never given again)."""
    if not batch_ids:
        return 0
    b = hold_batches.c
    newest = select(func.max(hold_batches.alias().c.id)).scalar_subquery()
    emptied = list(
        conn.scalars(
            select(b.id).where(
                b.id.in_(batch_ids),
                b.state.in_(BATCH_DECIDED),
                b.id < newest,
                ~exists().where(d.hold_batch_id == b.id),
            )
        )
    )
    if not emptied:
        return 0
    conn.execute(delete(hold_approvals).where(hold_approvals.c.batch_id.in_(emptied)))
    return conn.execute(delete(hold_batches).where(b.id.in_(emptied))).rowcount


def referenced_blobs(conn: Connection, hashes: set[str]) -> set[str]:
    """Those of ``hashes`` that a stored message or delivery still names (on the partial
    ``ix_*_blob_sha256`` indexes)."""
    if not hashes:
        return set()
    wanted = list(hashes)
    named = set(conn.scalars(select(m.blob_sha256).where(m.blob_sha256.in_(wanted))))
    return named | set(conn.scalars(select(d.blob_sha256).where(d.blob_sha256.in_(wanted))))


def _plain(row: Any) -> dict[str, Any]:
    """A row as JSON-ready values: bytes as text or base64, times as ISO 8601."""
    plain: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, bytes):
            try:
                plain[key] = value.decode("utf-8")
            except UnicodeDecodeError:
                plain[f"{key}_base64"] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, datetime):
            plain[key] = value.isoformat()
        elif key in ("source", "headers", "hold_labels") and isinstance(value, str):
            plain[key] = _json_or_text(value)
        else:
            plain[key] = value
    return plain


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
