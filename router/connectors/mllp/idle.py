"""An idle timeout for a connection: one timer for the connection's life.

A timer per message (``asyncio.timeout`` around every read, or a fresh
``call_later``) is a measurable share of the listener's work at thousands of
messages a second. This watch keeps one timer that re-arms itself only when it
fires, and gives up on the connection only while it is waiting for its peer
(never while its message is committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleWatch:
    """Calls ``on_idle`` once its connection has waited on its peer for ``seconds``."""

    def __init__(self, seconds: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._on_idle = on_idle
        self._since: float | None = None
        self._handle = self._loop.call_later(seconds, self._check)

    def waiting(self) -> None:
        """The connection starts waiting for the peer (to send, or to read its ACK)."""
        self._since = self._loop.time()

    def busy(self) -> None:
        """The peer sent a message: it is committed (maybe slowly) without a limit."""
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
        self._on_idle()
