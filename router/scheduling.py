"""APScheduler as the engine's pollers and housekeeping use it."""

from __future__ import annotations

from datetime import UTC

from apscheduler.schedulers.background import BackgroundScheduler


def background_scheduler() -> BackgroundScheduler:
    """Jobs in APScheduler's threads; a job still running or overdue runs once, when it can
    (never two at once, never a burst of missed turns)."""
    return BackgroundScheduler(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
