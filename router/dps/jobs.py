"""DPS handoff jobs: the ``job`` destination records them; ``run.py jobs`` lists them.

A job is keyed by the intake message's UUID. The channels' mapping sends a
small JSON record to the ``job`` destination at each step (received and sent
to DPS or failed validation; completed with its statistics). Recording is an
upsert, so a retried delivery changes nothing, and a late "sent to DPS" never
overwrites a job that has already finished.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from router.connectors import Delivery, SendResult
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import JOB_FINAL, jobs

FIELDS = ("practice", "filename", "received_at", "status", "statistics", "error")


def job_record(job_id: str, status: str, **fields: Any) -> bytes:
    """What a mapping sends to the ``job`` destination."""
    return json.dumps({"job_id": job_id, "status": status, **fields}, default=str).encode()


class JobSender:
    """The ``job`` destination: writes the job record a delivery carries."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            record = json.loads(delivery.body.read())
            job_id = str(record["job_id"])
        except (ValueError, KeyError, TypeError) as exc:
            return SendResult("fail", error=f"not a job record: {exc}")
        status = await asyncio.to_thread(self._upsert, job_id, record)
        return SendResult("sent", json.dumps({"job_id": job_id, "status": status}).encode())

    def _upsert(self, job_id: str, record: dict[str, Any]) -> str:
        values = {k: _column(k, record[k]) for k in FIELDS if record.get(k) is not None}
        values["updated_at"] = utcnow()
        with self._store.begin() as conn:
            current = conn.scalar(select(jobs.c.status).where(jobs.c.job_id == job_id))
            if current is None:
                conn.execute(jobs.insert().values(job_id=job_id, **values))
                return str(values.get("status"))
            if current in JOB_FINAL and values.get("status") not in JOB_FINAL:
                values.pop("status", None)
            conn.execute(update(jobs).where(jobs.c.job_id == job_id).values(**values))
            return str(values.get("status", current))

    async def close(self) -> None:
        return None


def _column(name: str, value: Any) -> Any:
    if name == "statistics":
        return json.dumps(value)
    if name == "received_at" and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


def list_jobs(store: Store, limit: int = 200) -> list[dict[str, Any]]:
    """The newest jobs first, with their statistics decoded."""
    with store.read() as conn:
        rows = conn.execute(
            select(jobs).order_by(jobs.c.received_at.desc(), jobs.c.updated_at.desc()).limit(limit)
        )
        return [
            {**r._mapping, "statistics": json.loads(r.statistics) if r.statistics else None}
            for r in rows
        ]
