"""The engine's pruner, run every ``retention.every`` in APScheduler's thread.

Every node schedules it; on PostgreSQL one node at a time does the work (an advisory lock,
DESIGN.md §9), the others skip that turn. The first run comes a minute after the start
(sooner with a shorter interval), out of the start's way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from router.config import ChannelConfig
from router.retention import Pruner, pruning_lock
from router.scheduling import Job, PollSchedule
from router.store.database import Store

log = logging.getLogger(__name__)


def retention_schedule(
    pruner: Pruner, store: Store, channels: Callable[[], Iterable[ChannelConfig]], every: float
) -> PollSchedule:
    """Prunes the channels ``channels()`` gives at the time (a reload may change them), and
    the API's expired idempotency keys; stopping lets the batch in hand finish."""

    def run() -> None:
        kept = [c for c in channels() if c.retention is not None]
        try:
            with pruning_lock(store) as leading:
                if leading:
                    pruner.expire_idempotency_keys()
                    for channel in kept:
                        pruner.prune(channel)
        except Exception:
            log.exception("retention run failed; the next run tries again")

    job = Job("retention", run, every, first=min(every, 60.0))
    return PollSchedule([pruner], [job], "retention pruner")
