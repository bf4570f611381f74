"""DPS jobs overdue: sent to DPS and not answered within ``dps.overdue_after``.

A job ``sent_to_dps`` waits for DPS's results, and nothing else moves it: a file lost on
the way to DPS, or at DPS, would leave it waiting for ever, silently. Overdue is a flag,
not a status (DPS's results still finish the job as usual): it shows in ``run.py jobs``,
``GET /api/jobs``, the console's DPS jobs page, and as the gauge ``tie_dps_jobs_overdue``
for an alert. The wait is counted from when the job was recorded ``sent_to_dps`` (its
``updated_at``): a file held by the post-office switch is not overdue for the pause, and
a resend of the file sent (also after ``failed_delivery``) starts the wait again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, func, select

from router.config.engine import DpsOptions
from router.store.schema import jobs

AWAITING = "sent_to_dps"
OVERDUE_AFTER = DpsOptions().overdue_after  # engine.yaml's default: 24 hours


def is_overdue(status: str, since: datetime | None, now: datetime, after: float) -> bool:
    """Whether a job of ``status`` recorded at ``since`` is overdue at ``now``."""
    return status == AWAITING and since is not None and now - since > timedelta(seconds=after)


def count_overdue(conn: Connection, now: datetime, after: float) -> int:
    """How many jobs are overdue at ``now`` (the status index finds those waiting)."""
    cutoff = now - timedelta(seconds=after)
    query = select(func.count()).where(jobs.c.status == AWAITING, jobs.c.updated_at < cutoff)
    return int(conn.scalar(query) or 0)
