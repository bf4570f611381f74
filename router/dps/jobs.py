"""DPS handoff jobs: their state machine, applied where a message's outcome is written.

A job is keyed by the intake message's UUID. The channels' mapping sends a small
JSON record to the ``job`` destination at each step; the engine applies it in
the transaction that writes the message's outcome (``apply``), so a record the
job's state refuses settles its message instead of sending anything: results
for a finished job are a ``filtered`` duplicate (idempotent receiver), results
for a job that never went to DPS an ``error``. A delivery that settles tells the job in
the transaction that settles it (``settled``): the file to DPS failing for good fails the
job, and a resend of it sent makes the job wait for DPS again; one of the outputs (a CSV
file, the summary email) failing for good after the job completed makes it
``failed_outputs``, until the resends of the failed ones are sent.
Whatever its status, a job also names each of its outputs that failed for good (a failure
email too, which no status can show: ``undelivered``) until a resend of it is sent.
Support may close a failed job nothing else will end (``CLOSABLE``, router/dps/closing.py):
``closed`` is final, and results for it are ``filtered``.
Every transition is checked here, against ``TRANSITIONS``; docs/dps-handoff.md
draws the machine.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from router.connectors import Delivery, SendResult
from router.dps.overdue import OVERDUE_AFTER, is_overdue
from router.local_destinations import Refusal
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.locks import hold_key
from router.store.schema import (
    HELD,
    JOB_KEY,
    PENDING,
    correlations,
    deliveries,
    jobs,
    messages,
)

FIELDS = ("practice", "filename", "received_at", "status", "statistics", "error")
KEY = JOB_KEY  # the correlation key the mapping sets: the job id
# Statuses the intake sets on a new job, and the results' statuses.
STARTS = ("sent_to_dps", "failed_validation")
RESULTS = ("completed", "failed_dps_validation", "failed_results")
# Where a job may go from each status; a status not here is final.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "sent_to_dps": (*RESULTS, "failed_delivery"),
    # DPS may send corrected results after unreadable ones; or support closes the job.
    "failed_results": (*RESULTS, "closed"),
    # An operator resent the failed file to DPS: once sent, its answer is awaited again.
    "failed_delivery": (*RESULTS, "sent_to_dps", "closed"),
    # A CSV file or the summary email failed for good...
    "completed": ("failed_outputs",),
    # ... and the resends of every failed one were sent (or support closed the job).
    "failed_outputs": ("completed", "closed"),
}
# The failures only an operator ends, which support may close (router/dps/closing.py).
CLOSABLE = tuple(s for s, to in TRANSITIONS.items() if "closed" in to)
# Finished states need no closing, unless an output failed for good and cannot be resent
# (a failure email to an address that is gone): support may close those too.
CLOSABLE_UNDELIVERED = ("completed", "failed_validation", "failed_dps_validation")
# The file to DPS failed for good: a job waiting for DPS fails; one failed already (a resend
# of the file failed too) is not moved but takes the new error, what support fixes next.
_FAILS_DELIVERY = [
    *(s for s, to in TRANSITIONS.items() if "failed_delivery" in to),
    "failed_delivery",
]
# A resend of the file to DPS sent: DPS's answer is awaited from then (also by a job still
# waiting for it, whose clock starts again).
_RESENT_TO_DPS = ["sent_to_dps", *(s for s, to in TRANSITIONS.items() if "sent_to_dps" in to)]
# Finished with DPS's answer: more results are a duplicate.
ANSWERED = ("completed", "failed_dps_validation", "failed_outputs")
# Finished: only an output that fails for good moves the job again (retention's JOB_FINAL).
FINAL = ("completed", "failed_validation", "failed_dps_validation", "closed")
_OUTPUT_PENDING = (*PENDING, HELD, "failed")
# A GP file received again, the same, while its job is one of these is a duplicate: it is
# with DPS, or DPS answered it. After a failure on the way (its name, its delivery, DPS's
# answer unreadable) the file may be sent again and is a new job.
_REPEATS = ("sent_to_dps", *ANSWERED)


def may_close(status: str, undelivered: list[dict[str, Any]]) -> bool:
    """Whether support may close a job of ``status`` naming ``undelivered`` outputs."""
    return status in CLOSABLE or (status in CLOSABLE_UNDELIVERED and bool(undelivered))


def job_record(job_id: str, status: str, **fields: Any) -> bytes:
    """What a mapping sends to the ``job`` destination."""
    return json.dumps({"job_id": job_id, "status": status, **fields}, default=str).encode()


def apply(conn: Connection, payload: bytes, message_id: int) -> Refusal | None:
    """Apply the job record ``payload`` of message ``message_id`` in ``conn``'s transaction
    if the job's state allows it; else why not (the message's outcome instead)."""
    try:
        record = json.loads(payload)
        job_id, status = str(record["job_id"]), str(record["status"])
    except (ValueError, KeyError, TypeError) as exc:
        return Refusal("error", f"not a job record: {exc}")
    query = select(jobs.c.status, jobs.c.practice, jobs.c.filename).where(jobs.c.job_id == job_id)
    if conn.dialect.name == "postgresql" and status not in STARTS:
        # Two nodes' results for one job: one waits. (A start changes no job that exists:
        # it takes only its file name's lock, below; see ``lock_key``.)
        query = query.with_for_update()
    job = conn.execute(query).first()
    current = job.status if job else None
    values = {k: _column(k, record[k]) for k in FIELDS if record.get(k) is not None}
    values["updated_at"] = utcnow()
    if status in STARTS:
        if current is not None:
            return None  # a start again (a retry, a resend) changes nothing
        filename = str(record.get("filename") or "")
        # Two nodes given the same file at once: the second waits for the first's commit,
        # then finds its job (looking, then inserting, both would go to DPS).
        hold_key(conn, f"dps-gp-file:{filename}")
        repeat = _repeat_of(conn, filename, message_id)
        if repeat is not None:
            original, uuid, was = repeat
            return Refusal(
                "filtered",
                f"duplicate of {uuid}: GP file {record['filename']} was received before, the "
                f"same (job {uuid} is {was}); not sent to DPS again",
                original,
            )
        conn.execute(jobs.insert().values(job_id=job_id, **values))
        return None
    if status not in RESULTS:
        return Refusal("error", f"job {job_id}: unknown status {status!r}")
    if current == "closed":
        return Refusal("filtered", f"job {job_id} was closed: {_closure(conn, job_id)}; not sent")
    if current is None:
        reason = f"no job {job_id}: results for a job tie never started; not sent"
        # Results that could not be read say why too: their MESH local id named the job.
        return Refusal("error", f"{reason} ({record['error']})" if record.get("error") else reason)
    if current not in ANSWERED and status in TRANSITIONS.get(current, ()):
        mismatch = _other_file(job, record)
        if mismatch:
            return Refusal("error", f"job {job_id} is {mismatch}: not sent")
        conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))
        return None
    if current in ANSWERED:
        original = _answered_by(conn, job_id, message_id)
        reason = f"job {job_id} is {current} already; these results are not sent again"
        if original is not None:
            reason = f"duplicate of {original[1]}: {reason}"
        return Refusal("filtered", reason, original[0] if original else None)
    return Refusal("error", f"job {job_id} is {current}: it never went to DPS; results not sent")


def lock_key(payload: bytes) -> str:
    """What applying the job record ``payload`` locks: its GP file name for a start, its job
    for results. The processor applies a batch's records in this order (router/
    local_destinations.py), and ``settled`` locks jobs in the order of their ids: every
    transaction takes them in one order, so none waits for another that waits for it."""
    try:
        record = json.loads(payload)
        if record["status"] in STARTS:
            return f"file:{record.get('filename') or ''}"
        return f"job:{record['job_id']}"
    except (ValueError, KeyError, TypeError):
        return ""  # not a job record: ``apply`` refuses it, locking nothing


def _closure(conn: Connection, job_id: str) -> str:
    """Who closed the job, from which status, and why."""
    job = conn.execute(
        select(jobs.c.closed_from, jobs.c.closed_by, jobs.c.close_reason).where(
            jobs.c.job_id == job_id
        )
    ).one()
    return f"{job.closed_from}, closed by {job.closed_by}: {job.close_reason}"


def _other_file(job: Any, record: dict[str, Any]) -> str | None:
    """How results ``record`` names another GP file or practice than ``job`` is, if it
    does: its CSV files would go to PCSE under the wrong practice."""
    named = (record.get("practice"), record.get("filename"))
    known = (job.practice, job.filename)
    if not all(named) or not all(known):
        return None  # a header that could not be read names neither
    if [str(v).upper() for v in named] == [str(v).upper() for v in known]:
        return None
    return (
        f"GP file {known[1]} of practice {known[0]}; these results name "
        f"{named[1]} of practice {named[0]}"
    )


def settled(conn: Connection, delivery_ids: list[int], local: set[tuple[str, str]]) -> None:
    """Move the jobs of ``delivery_ids`` (those settled for good) on: the file to DPS
    ``failed`` fails a job still waiting for DPS (``failed_delivery``; a resend of it failed
    too gives a ``failed_delivery`` job its error), a resend of it ``sent`` makes a waiting
    or ``failed_delivery`` job wait for DPS again from now (``sent_to_dps``, its error
    cleared: overdue counts from the resend); an output of the results that completed a
    job (not a ``local`` (channel, destination): the job record itself) ``failed`` makes it
    ``failed_outputs``; a resend of one ``sent`` makes a ``failed_outputs`` job
    ``completed`` again once none of those outputs is failed or still to be sent. The error
    of a ``failed_outputs`` job is its first failed output's. Each of them also marks or
    clears its output on the job, whatever its status (``_mark_undelivered``)."""
    d = deliveries.c
    found = conn.execute(
        select(
            correlations.c.value,
            d.id,
            d.message_id,
            d.channel,
            d.destination,
            d.status,
            d.last_error,
            d.resent_from,
            messages.c.uuid,
        )
        .join(correlations, correlations.c.message_id == d.message_id)
        .join(messages, messages.c.id == d.message_id)
        .where(
            d.id.in_(delivery_ids),
            (d.status == "failed") | ((d.status == "sent") & d.resent_from.is_not(None)),
            correlations.c.key == KEY,
        )
    ).all()
    found = [r for r in found if (r.channel, r.destination) not in local]
    touched = sorted({r.value for r in found})
    if touched and conn.dialect.name == "postgresql":
        # The outputs' workers settle side by side: the second waits for the first to
        # commit, so each sees the other's outcome before judging the job (in one order:
        # no deadlock between two rounds).
        query = select(jobs.c.job_id).where(jobs.c.job_id.in_(touched)).order_by(jobs.c.job_id)
        conn.execute(query.with_for_update()).all()
    for job_id, delivery_id, message_id, _, destination, status, error, resent_from, uuid in found:
        _mark_undelivered(conn, job_id, delivery_id, destination, status, error, resent_from)
        failure = f"delivery to {destination} failed: {error or 'no reason given'}"
        if uuid == job_id:  # the intake's: the file to DPS
            if status == "failed":
                _move(conn, job_id, _FAILS_DELIVERY, "failed_delivery", failure)
            else:  # sent again: DPS's answer is awaited from now (router/dps/overdue.py)
                _move(conn, job_id, _RESENT_TO_DPS, "sent_to_dps", None)
            continue
        answer = _answered_by(conn, job_id, -1)
        if answer is None or answer[0] != message_id:
            continue  # an earlier answer's failure email: the job has moved on
        if status == "failed":
            _move(conn, job_id, ["completed"], "failed_outputs", failure)
        elif not _outputs_unsettled(conn, message_id, local):
            _move(conn, job_id, ["failed_outputs"], "completed", None)


def _mark_undelivered(
    conn: Connection,
    job_id: str,
    delivery_id: int,
    destination: str,
    status: str,
    error: str | None,
    resent_from: int | None,
) -> None:
    """Keep the job's ``undelivered`` outputs: a delivery failed for good adds itself (in
    place of the earlier failed copy of its output: one entry an output, whose ``original``
    is its first failed delivery); a resend sent removes its output's entry. An output is
    a chain of resends (``_first_of``): a copy may be resent from any copy of it, an
    earlier failed one or a sent one, not only from the one its entry names. A failure
    email has no status of its own to show that the practice was never told."""
    stored = conn.scalar(select(jobs.c.undelivered).where(jobs.c.job_id == job_id))
    marks: list[dict[str, Any]] = json.loads(stored) if stored else []
    output = _first_of(conn, resent_from) if resent_from is not None else None
    earlier = [m for m in marks if output is not None and _first_of(conn, m["original"]) == output]
    kept = [m for m in marks if m not in earlier]
    if status == "failed":
        original = earlier[0]["original"] if earlier else delivery_id
        mark = {"delivery_id": delivery_id, "destination": destination, "error": error}
        kept.append({**mark, "original": original})
    if kept != marks:
        conn.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(undelivered=json.dumps(kept) if kept else None, updated_at=utcnow())
        )


def _first_of(conn: Connection, delivery_id: int) -> int:
    """The first delivery of the output ``delivery_id`` is a copy of (following its
    ``resent_from`` back), or itself."""
    seen = {delivery_id}
    while True:
        earlier = conn.scalar(
            select(deliveries.c.resent_from).where(deliveries.c.id == delivery_id)
        )
        if earlier is None or earlier in seen:
            return delivery_id
        seen.add(earlier)
        delivery_id = earlier


def unknown_report(conn: Connection, meta: dict[str, Any], reason: str) -> tuple[str, str] | None:
    """A MESH non-delivery report for a message no stored delivery sent: retention removed
    its delivery with its message (the results' channel keeps them less long than the
    intake keeps the job). MESH copies the original's local id into its report, and the
    channels make it the job id (``{job_id}`` to DPS, ``{job_id}-{delivery_id}`` to PCSE):
    the job it names, if still kept, fails as for an output, with a reason that says it
    cannot be resent. (The file to DPS cannot be the one: its job goes with its intake
    message.) The correlation of the report to that job, else None."""
    local_id = str(meta.get("local_id") or "")
    if not local_id:
        return None
    query = select(jobs.c.job_id).where(jobs.c.job_id.in_([local_id, local_id.rsplit("-", 1)[0]]))
    if conn.dialect.name == "postgresql":
        query = query.order_by(jobs.c.job_id).with_for_update()  # in ``settled``'s order
    found = set(conn.scalars(query))
    if not found:
        return None
    job_id = local_id if local_id in found else found.pop()
    failure = (
        f"MESH message {meta.get('linked_message_id')} (local id {local_id}) failed: {reason};"
        " its delivery is no longer stored (retention removed it), so it cannot be resent:"
        " send it again from the archive"
    )
    _move(conn, job_id, ["completed"], "failed_outputs", failure)
    return KEY, job_id


def _move(conn: Connection, job_id: str, sources: list[str], to: str, error: str | None) -> None:
    """``job_id`` to ``to`` with ``error`` if it is in one of ``sources``."""
    conn.execute(
        update(jobs)
        .where(jobs.c.job_id == job_id, jobs.c.status.in_(sources))
        .values(status=to, error=error, updated_at=utcnow())
    )


def _outputs_unsettled(conn: Connection, message_id: int, local: set[tuple[str, str]]) -> bool:
    """Whether an output of message ``message_id`` is failed or still to be sent."""
    d = deliveries.c
    rows = conn.execute(
        select(d.channel, d.destination).where(
            d.message_id == message_id, d.status.in_(_OUTPUT_PENDING)
        )
    ).all()
    return any((r.channel, r.destination) not in local for r in rows)


def _repeat_of(conn: Connection, filename: str, message_id: int) -> tuple[int, str, str] | None:
    """The intake message (id, UUID) and job status of an earlier GP file named
    ``filename`` with the same content as message ``message_id``, whose job went to DPS
    and did not fail on the way (a file whose job failed there may be sent again)."""
    if not filename:
        return None
    arrived = messages.alias("arrived")
    m, new = messages.c, arrived.c
    same_content = (m.size == new.size) & (
        (m.blob_sha256 == new.blob_sha256)
        | (m.blob_sha256.is_(None) & new.blob_sha256.is_(None) & (m.raw == new.raw))
    )
    row = conn.execute(
        select(m.id, m.uuid, jobs.c.status)
        .join(jobs, jobs.c.job_id == m.uuid)
        .join(arrived, new.id == message_id)
        .where(jobs.c.filename == filename, jobs.c.status.in_(_REPEATS), same_content)
        .order_by(m.id)
        .limit(1)
    ).first()
    return (row.id, row.uuid, row.status) if row else None


def _answered_by(conn: Connection, job_id: str, message_id: int) -> tuple[int, str] | None:
    """The latest other processed message of the job that is not its intake: the results
    that answered it."""
    m = messages.c
    row = conn.execute(
        select(m.id, m.uuid)
        .join(correlations, correlations.c.message_id == m.id)
        .where(
            correlations.c.key == KEY,
            correlations.c.value == job_id,
            m.id != message_id,
            m.uuid != job_id,
            m.status == "processed",
        )
        .order_by(m.id.desc())
        .limit(1)
    ).first()
    return (row.id, row.uuid) if row else None


class JobSender:
    """The ``job`` destination for a delivery the dispatcher sends (a resend, or one queued
    before the engine applied job records as it processes): ``apply`` in its own transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def send(self, delivery: Delivery) -> SendResult:
        body = delivery.body.read()
        refusal, job_id, status = await asyncio.to_thread(self._apply, body, delivery.message_id)
        if refusal is not None:
            return SendResult("fail", error=refusal.reason)
        return SendResult("sent", json.dumps({"job_id": job_id, "status": status}).encode())

    def _apply(self, body: bytes, message_id: int) -> tuple[Refusal | None, str, str | None]:
        with self._store.begin() as conn:
            refusal = apply(conn, body, message_id)
            job_id = str(json.loads(body).get("job_id")) if refusal is None else ""
            status = conn.scalar(select(jobs.c.status).where(jobs.c.job_id == job_id))
            return refusal, job_id, status

    async def close(self) -> None:
        return None


def _column(name: str, value: Any) -> Any:
    if name == "statistics":
        return json.dumps(value)
    if name == "received_at" and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def list_jobs(
    store: Store, limit: int = 200, overdue_after: float = OVERDUE_AFTER
) -> list[dict[str, Any]]:
    """The newest jobs first, with their statistics and undelivered outputs decoded, whether
    support may close each, and whether DPS's answer is overdue (router/dps/overdue.py)."""
    with store.read() as conn:
        rows = conn.execute(
            select(jobs).order_by(jobs.c.received_at.desc(), jobs.c.updated_at.desc()).limit(limit)
        )
        found = [
            {
                **r._mapping,
                "statistics": json.loads(r.statistics) if r.statistics else None,
                "undelivered": json.loads(r.undelivered) if r.undelivered else [],
            }
            for r in rows
        ]
    now = utcnow()
    for job in found:
        job["closable"] = may_close(job["status"], job["undelivered"])
        job["overdue"] = is_overdue(job["status"], job["updated_at"], now, overdue_after)
    return found
