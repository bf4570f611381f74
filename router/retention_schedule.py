"""The engine's pruner, run every ``retention.every`` in APScheduler's thread.

Every node schedules it; on PostgreSQL one node at a time does the work (an advisory lock,
DESIGN.md §9), the others skip that turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from router.config import ChannelConfig
from router.retention import Pruner
from router.scheduling import background_scheduler
from router.store.database import Store
from router.store.leader import leader

log = logging.getLogger(__name__)


class RetentionSchedule:
    """Prunes the channels ``channels()`` gives at the time (a reload may change them)."""

    def __init__(
        self,
        pruner: Pruner,
        store: Store,
        channels: Callable[[], Iterable[ChannelConfig]],
        every: float,
    ) -> None:
        self.pruner = pruner
        self._store = store
        self._channels = channels
        self._every = every
        self._scheduler = background_scheduler()

    def start(self) -> None:
        """The first run a minute after the start (sooner with a shorter interval), out of the
        start's way; then every interval."""
        first = datetime.now(UTC) + timedelta(seconds=min(self._every, 60.0))
        self._scheduler.add_job(
            self.run, "interval", seconds=self._every, next_run_time=first, id="retention"
        )
        self._scheduler.start()

    def run(self) -> None:
        """One turn: every channel with a retention policy, if this node leads."""
        kept = [c for c in self._channels() if c.retention is not None]
        if not kept:
            return
        try:
            with leader(self._store, "tie-retention") as leading:
                if leading:
                    for channel in kept:
                        self.pruner.prune(channel)
        except Exception:
            log.exception("retention run failed; the next run tries again")

    def stop(self) -> None:
        """Let the batch in hand finish, then stop."""
        self.pruner.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
