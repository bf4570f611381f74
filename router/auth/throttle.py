"""Slowing down password guessing: after a few failures a name is refused for a while.

The wait doubles with each further failure (up to ``longest``) and a success
clears it. At most ``capacity`` names are remembered, the least recent dropped
first, so a flood of made-up names cannot grow memory. Each engine node keeps
its own count.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Failures:
    count: int
    until: float


class LoginThrottle:
    def __init__(
        self,
        *,
        free: int = 5,
        first: float = 1.0,
        longest: float = 300.0,
        capacity: int = 10_000,
    ) -> None:
        self.free = free
        self.first = first
        self.longest = longest
        self.capacity = capacity
        self._names: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, name: str) -> float:
        """Seconds before ``name`` may try again (0 when it may now)."""
        entry = self._names.get(name)
        return max(0.0, entry.until - time.monotonic()) if entry else 0.0

    def failed(self, name: str) -> None:
        entry = self._names.pop(name, None) or _Failures(0, 0.0)
        entry.count += 1
        over = entry.count - self.free
        if over >= 0:
            entry.until = time.monotonic() + min(self.longest, self.first * 2**over)
        self._names[name] = entry
        while len(self._names) > self.capacity:
            self._names.popitem(last=False)

    def succeeded(self, name: str) -> None:
        self._names.pop(name, None)
