"""An idle timeout for a connection's reads: one timer for the connection's life.

``asyncio.timeout`` around every frame schedules and cancels a timer per message,
a measurable share of the listener's work at thousands of messages a second. This
watch keeps one timer that re-arms itself only when it fires, and cancels the task
only while the task is waiting for its peer (never while its message is committed).
"""

from __future__ import annotations

import asyncio


class IdleWatch:
    """Cancels the current task once it has waited on its peer for ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._seconds = seconds
        self._since: float | None = None
        self.expired = False
        self._handle = self._loop.call_later(seconds, self._check)

    def waiting(self) -> None:
        """The task starts waiting for the peer."""
        self._since = self._loop.time()

    def busy(self) -> None:
        """The peer answered: the task works (and may wait on the store) without a limit."""
        self._since = None

    def close(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        if self._since is None:
            self._handle = self._loop.call_later(self._seconds, self._check)
            return
        left = self._seconds - (self._loop.time() - self._since)
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self.expired = True
        if self._task is not None:
            self._task.cancel()
