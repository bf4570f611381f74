"""An idle timeout for a connection: one timer for the connection's life.

A timer per message (``asyncio.timeout`` around every read, or a fresh
``call_later``) is a measurable share of the listener's work at thousands of
messages a second. This watch keeps one timer that re-arms itself only when it
fires, and gives up on the connection only while it is waiting for its peer
(never while its message is committed). Bytes arriving only raise a flag, read
when the timer fires: a peer still sending a large frame is not idle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class IdleWatch:
    """Calls ``on_idle`` once its connection has waited on its peer for ``seconds``.

    Bytes that arrive (``heard``) count from the moment the timer next fires, so a
    silent peer is cut off after between ``seconds`` and twice that.
    """

    def __init__(self, seconds: float, on_idle: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._on_idle = on_idle
        self._since: float | None = None
        self._heard = False
        self._handle = self._loop.call_later(seconds, self._check)

    def waiting(self) -> None:
        """The connection starts waiting for the peer (to send, or to read its ACK)."""
        self._since = self._loop.time()
        self._heard = False

    def busy(self) -> None:
        """The peer sent a message: it is committed (maybe slowly) without a limit."""
        self._since = None

    def heard(self) -> None:
        """Bytes arrived from the peer: it is not idle, even in the middle of a frame."""
        self._heard = True

    def close(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        if self._since is None:
            self._handle = self._loop.call_later(self._seconds, self._check)
            return
        now = self._loop.time()
        if self._heard:
            self._heard = False
            self._since = now
        left = self._seconds - (now - self._since)
        if left > 0:
            self._handle = self._loop.call_later(left, self._check)
            return
        self._on_idle()
