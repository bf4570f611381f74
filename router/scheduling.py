"""APScheduler as the engine's pollers and housekeeping use it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)


def background_scheduler() -> BackgroundScheduler:
    """Jobs in APScheduler's threads; a job still running or overdue runs once, when it can
    (never two at once, never a burst of missed turns)."""
    return BackgroundScheduler(
        timezone=UTC,
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )


class Poller(Protocol):
    def stop(self) -> None:
        """Finish the item in hand and take no more."""


@dataclass(frozen=True)
class Job:
    id: str
    run: Callable[[], object]
    every: float  # seconds
    first: float = 0.0  # seconds from the start to the first run


class PollSchedule:
    """Interval jobs of pollers (MESH mailboxes, folders) and housekeeping (retention),
    each run first ``first`` seconds after the start."""

    def __init__(self, pollers: Sequence[Poller], jobs: list[Job], what: str) -> None:
        self.pollers = pollers
        self._jobs = jobs
        self._what = what
        self._scheduler = background_scheduler()

    def start(self) -> None:
        if not self._jobs:
            return
        now = datetime.now(UTC)
        for job in self._jobs:
            first = now + timedelta(seconds=job.first)
            self._scheduler.add_job(
                job.run, "interval", seconds=job.every, next_run_time=first, id=job.id
            )
        self._scheduler.start()
        log.info("scheduled %d %s", len(self.pollers), self._what)

    def stop(self) -> None:
        """Let each poller finish what it has in hand, then stop the jobs."""
        for poller in self.pollers:
            poller.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
