"""Mappings of the DPS handoff (List Reconciliation) channels; see docs/dps-handoff.md.

``intake`` validates a GP extract's file name and either forwards the file,
unchanged, to DPS or sends the failure email; ``results`` turns DPS's JSON Lines
into the three CSV files for PCSE and the summary email. Both record the job; the
engine applies the record first and sends nothing when the job's state refuses it
(results for a finished job, or one that never went to DPS): see router/dps/jobs.py.
"""

from __future__ import annotations

from typing import Any

from router.dps.filename import FilenameError, processing_date, validate_filename
from router.dps.jobs import job_record
from router.dps.results import (
    ResultsError,
    csv_files,
    failure_body,
    failure_subject,
    is_job_id,
    read_results,
    summary_body,
    summary_subject,
    unreadable_body,
    unreadable_subject,
)
from router.message import Message, Output

JSON = "application/json"
MAX_FILENAME = 255


def intake(message: Message) -> dict[str, Any]:
    """gp-extract-intake: destinations ``job``, ``dps`` and ``failure-email``."""
    # The sender's Mex-FileName, bounded to the job's column before anything uses it.
    filename = str(message.source.get("filename") or "")[:MAX_FILENAME]
    job_id = message.uuid
    message.correlate("dps_job", job_id)
    received = message.received_at
    try:
        name = validate_filename(filename, processing_date(received))
    except FilenameError as exc:
        practice = filename.split("_", 1)[0].upper()[:16] or None
        record = job_record(
            job_id,
            "failed_validation",
            practice=practice,
            filename=filename,
            received_at=received,
            error=str(exc),
        )
        email = failure_body(filename, received, [str(exc)])  # type: ignore[arg-type]
        headers = {"subject": failure_subject(filename), "job_id": job_id}
        return {"job": Output(record, JSON), "failure-email": Output(email, "text/plain", headers)}
    record = job_record(
        job_id, "sent_to_dps", practice=name.practice, filename=name.filename, received_at=received
    )
    forward = Output(
        message.body, message.content_type, {"filename": name.filename, "job_id": job_id}
    )
    return {"job": Output(record, JSON), "dps": forward}


def results(message: Message) -> dict[str, Any]:
    """dps-results: destinations ``job``, ``pcse``, ``summary-email`` and ``failure-email``."""
    at = message.received_at
    assert at is not None
    with message.open() as stream:
        try:
            found = read_results(stream)
        except ResultsError as exc:
            if exc.results is not None:
                header = exc.results
                return _unreadable(
                    message, header.job_id, str(exc), header.practice, header.filename
                )
            # No header to name the job: DPS sends the results with the job id as their
            # MESH local id, as tie sent the file.
            job_id = str(message.source.get("local_id") or "")
            if not is_job_id(job_id):
                raise  # no job named: the message is an ``error``, with the line
            return _unreadable(message, job_id, str(exc))
    message.correlate("dps_job", found.job_id)
    headers = {"job_id": found.job_id}
    who = {"practice": found.practice, "filename": found.filename}
    if found.failed:
        reasons = [_reason(e) for e in found.failures]
        record = job_record(found.job_id, "failed_dps_validation", error="; ".join(reasons), **who)
        email = Output(
            failure_body(found.filename, at, reasons),
            "text/plain",
            {**headers, "subject": failure_subject(found.filename)},
        )
        return {"job": Output(record, JSON), "failure-email": email}
    files = csv_files(found, at)
    record = job_record(found.job_id, "completed", statistics=found.statistics, **who)
    summary = Output(
        summary_body(found, at, [name for name, _ in files]),
        "text/plain",
        {**headers, "subject": summary_subject(found.practice, found.filename, at)},
    )
    return {
        "job": Output(record, JSON),
        "pcse": [Output(data, "text/csv", {**headers, "filename": name}) for name, data in files],
        "summary-email": summary,
    }


def _unreadable(
    message: Message,
    job_id: str,
    reason: str,
    practice: str | None = None,
    filename: str | None = None,
) -> dict[str, Any]:
    """Results that break the layout, of the job their header or MESH local id names: the
    job fails with the reason and the failure email says so; nothing goes to PCSE."""
    message.correlate("dps_job", job_id)
    record = job_record(
        job_id, "failed_results", practice=practice, filename=filename, error=reason
    )
    email = Output(
        unreadable_body(filename, job_id, message.received_at, reason),  # type: ignore[arg-type]
        "text/plain",
        {"job_id": job_id, "subject": unreadable_subject(filename, job_id)},
    )
    return {"job": Output(record, JSON), "failure-email": email}


def _reason(error: Any) -> str:
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)
