"""Slowing down password guessing: after a few failures a name is refused for a while.

The wait doubles with each further failure (up to ``longest``) and a success
clears it. At most ``capacity`` names are remembered, the least recent dropped
first, so a flood of made-up names cannot grow memory. Each engine node keeps
its own count.

A refused try costs nothing to send (no password is checked), so the tries refused
while a name waits are not each an audit row: they are counted, and one row per
``note_every`` seconds per name carries the count and the addresses they came from
(``refused``); what is left when the name next signs in or fails is written with that
row (``unnoted``). A name forgotten for ``capacity`` loses its count with it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_ADDRESSES = 10  # per row: enough to tell one source from many, bounded


@dataclass(frozen=True)
class Refusals:
    """Tries refused while a name waited, not yet in the audit log."""

    count: int
    addresses: list[str]


def with_refusals(details: dict[str, Any], refusals: Refusals | None) -> dict[str, Any]:
    """An audit event's ``details`` with the refused tries no row has counted yet."""
    if refusals is None:
        return details
    return {**details, "refused": refusals.count, "refused_from": refusals.addresses}


@dataclass
class _Failures:
    count: int
    until: float
    refused: int = 0
    addresses: set[str] = field(default_factory=set)
    noted: float | None = None  # when refusals were last written to the audit log


class LoginThrottle:
    def __init__(
        self,
        *,
        free: int = 5,
        first: float = 1.0,
        longest: float = 300.0,
        capacity: int = 10_000,
        note_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.first = first
        self.longest = longest
        self.capacity = capacity
        self.note_every = note_every
        self._clock = clock
        self._names: OrderedDict[str, _Failures] = OrderedDict()

    def wait(self, name: str) -> float:
        """Seconds before ``name`` may try again (0 when it may now)."""
        entry = self._names.get(name)
        return max(0.0, entry.until - self._clock()) if entry else 0.0

    def failed(self, name: str) -> None:
        entry = self._names.pop(name, None) or _Failures(0, 0.0)
        entry.count += 1
        over = entry.count - self.free
        if over >= 0:
            # 2**over past 1023 is too large for a float: the longest wait is reached long before
            entry.until = self._clock() + min(self.longest, self.first * 2.0 ** min(over, 64))
        self._names[name] = entry
        while len(self._names) > self.capacity:
            self._names.popitem(last=False)

    def refused(self, name: str, remote: str) -> Refusals | None:
        """Count a try refused because ``name`` waits; the refusals to write to the audit
        log when a row is due (the first, then one per ``note_every``), else None."""
        entry = self._names.get(name)
        if entry is None:
            return None
        entry.refused += 1
        if len(entry.addresses) < MAX_ADDRESSES:
            entry.addresses.add(remote)
        now = self._clock()
        if entry.noted is not None and now - entry.noted < self.note_every:
            return None
        entry.noted = now
        return self._take(entry)

    def unnoted(self, name: str) -> Refusals | None:
        """The refusals counted since the last row (None: none), to go with the next one."""
        entry = self._names.get(name)
        return self._take(entry) if entry is not None and entry.refused else None

    def succeeded(self, name: str) -> None:
        self._names.pop(name, None)

    @staticmethod
    def _take(entry: _Failures) -> Refusals:
        taken = Refusals(entry.refused, sorted(entry.addresses))
        entry.refused = 0
        entry.addresses = set()
        return taken
