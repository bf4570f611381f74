"""APScheduler jobs for MESH: each mailbox polled at its interval, handshakes on start and daily."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from router.connectors.mesh.poller import MailboxPoller
from router.scheduling import background_scheduler

log = logging.getLogger(__name__)


class MeshSchedule:
    """Runs the pollers in APScheduler's thread pool: one job at a time per mailbox."""

    def __init__(self, pollers: list[MailboxPoller]) -> None:
        self.pollers = pollers
        self._scheduler = background_scheduler()

    def start(self) -> None:
        if not self.pollers:
            return
        now = datetime.now(UTC)
        for poller in self.pollers:
            self._scheduler.add_job(
                poller.handshake,
                "interval",
                seconds=poller.handshake_every,
                next_run_time=now,
                id=f"mesh-handshake:{poller.name}",
            )
            self._scheduler.add_job(
                poller.poll,
                "interval",
                seconds=poller.interval,
                next_run_time=now,
                id=f"mesh-poll:{poller.name}",
            )
        self._scheduler.start()
        log.info("polling %d MESH mailbox(es)", len(self.pollers))

    def stop(self) -> None:
        """Let each poller finish the message in hand, then stop the scheduler."""
        for poller in self.pollers:
            poller.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
