"""A warning that a peer can cause over and over, logged once per peer and kind a window.

A sender that reconnects in a tight loop sending badly framed bytes made the MLLP
listener write a warning per connection: about 12,000 lines a minute from one client.
The first of each kind from each host is logged; the ones after it, for ``REMIND_EVERY``
seconds, are only counted, and the first one after the window says how many there were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

from router.outage_log import REMIND_EVERY

# Hosts x kinds remembered at most; beyond it the windows that have ended are forgotten.
_REMEMBERED = 1024


class RepeatLog:
    """``info``, ``warning``, ``error`` (key, message, args): logged unless one with the
    same key was within the window."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._every = every
        self._clock = clock
        self._windows: dict[Hashable, list[float]] = {}  # key -> [window start, count in it]

    def info(self, key: Hashable, message: str, *args: object) -> None:
        self._emit(logging.INFO, key, message, *args)

    def warning(self, key: Hashable, message: str, *args: object) -> None:
        self._emit(logging.WARNING, key, message, *args)

    def error(self, key: Hashable, message: str, *args: object) -> None:
        self._emit(logging.ERROR, key, message, *args)

    def _emit(self, level: int, key: Hashable, message: str, *args: object) -> None:
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window[0] < self._every:
            window[1] += 1
            return
        if window is not None and window[1]:
            message += " (and %d more like it in the %d s before)"
            args = (*args, window[1], now - window[0])
        self._log.log(level, message, *args)
        self._windows[key] = [now, 0]
        if len(self._windows) > _REMEMBERED:
            self._forget_before(now - self._every)

    def _forget_before(self, start: float) -> None:
        for key in [k for k, (since, _) in self._windows.items() if since < start]:
            del self._windows[key]
