"""Closing a DPS job by hand: support's audited end for a failure nothing else will end.

A job ``failed_outputs`` whose output can no longer be resent (a late non-delivery report
after retention removed its delivery), ``failed_delivery`` or ``failed_results`` that will
not be answered, would otherwise stay so for ever, and retention would keep its intake
message with it; a finished job naming an output that failed for good (a failure email to
a mailbox that is gone) would name it for ever. Closing records who, when, why and the
status it had, in the audit log too (with the undelivered outputs); the job's error
stays. A closed job is final: retention treats it as settled, new results for it are
filtered, and the same GP file received again is a new job.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update

from router import audit
from router.dps.jobs import CLOSABLE, CLOSABLE_UNDELIVERED, may_close
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import jobs


class NoSuchJob(LookupError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id}")


class NotClosable(Exception):
    """The job's status is not one support may close: it is in progress or finished."""

    def __init__(self, job_id: str, status: str) -> None:
        why = (
            "DPS's answer is still awaited: resend its file to DPS if it was lost"
            if status == "sent_to_dps"
            else "it is finished already, and names no undelivered output"
        )
        super().__init__(
            f"job {job_id} is {status}: only a {', '.join(CLOSABLE)} job, or a"
            f" {', '.join(CLOSABLE_UNDELIVERED)} one naming an undelivered output, may be"
            f" closed ({why})"
        )
        self.status = status


def close_job(store: Store, job_id: str, *, reason: str, actor: str) -> dict[str, Any]:
    """Close ``job_id`` for ``reason`` with an audit event, in one transaction; what the
    closing recorded. Raises NoSuchJob, NotClosable, or ValueError for an empty reason."""
    if not reason.strip():
        raise ValueError("a reason is required: say why the job is closed")
    with store.begin() as conn:
        query = select(jobs).where(jobs.c.job_id == job_id)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # a resend settling at once waits, or wins
        job = conn.execute(query).first()
        if job is None:
            raise NoSuchJob(job_id)
        undelivered = json.loads(job.undelivered) if job.undelivered else []
        if not may_close(job.status, undelivered):
            raise NotClosable(job_id, job.status)
        now = utcnow()
        closing = {"closed_from": job.status, "closed_by": actor, "close_reason": reason}
        conn.execute(
            update(jobs)
            .where(jobs.c.job_id == job_id)
            .values(status="closed", closed_at=now, updated_at=now, **closing)
        )
        details = {"reason": reason, "from": job.status, "error": job.error}
        if undelivered:
            details["undelivered"] = undelivered
        audit.append(conn, actor, "job.close", f"job:{job_id}", details)
        return {"job_id": job_id, "status": "closed", "closed_at": now, **closing}


def closure(job: dict[str, Any]) -> str:
    """Who closed the listed ``job``, from which status, and why; the outputs that kept a
    finished one open are still named as undelivered, beside it, until a resend is sent."""
    return f"closed by {job['closed_by']} (was {job['closed_from']}): {job['close_reason']}"
