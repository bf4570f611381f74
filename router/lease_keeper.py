"""Keeps a dispatch round's delivery leases alive while it sends.

A lease that runs out makes its delivery due again for any node (DESIGN.md §3.3, §9).
That is right for a node that died, wrong for one that is merely waiting on a slow
receiver: a single MLLP send may take its connect and ACK timeouts (40 s by default)
and an ordered round sends its lane one message at a time, so a round can outlast a
30 s lease. Another node would then send the same messages again, out of order.
So while a round sends, its leases are renewed every third of the lease; a node that
dies stops renewing and its leases run out as before. A delivery whose lease was lost
anyway (the node stalled past it) is not sent: another node has it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)
Renew = Callable[[list[int]], Awaitable[set[int]]]


class LeaseKeeper:
    """Renews ``ids``' leases every ``every`` seconds until the round ends; ``held`` are
    those this node still holds. An async context manager around the round's sends."""

    def __init__(self, ids: list[int], every: float, renew: Renew) -> None:
        self.held = set(ids)
        self._every = every
        self._renew = renew
        self._timer: asyncio.TimerHandle | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> LeaseKeeper:
        self._timer = asyncio.get_running_loop().call_later(self._every, self._due)
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.wait([self._renewal])

    def _due(self) -> None:
        if not self._closed:
            self._renewal = asyncio.get_running_loop().create_task(self._renew_held())

    async def _renew_held(self) -> None:
        try:
            still = await self._renew(sorted(self.held))
        except Exception:
            log.exception("renewing %d delivery lease(s) failed; trying again", len(self.held))
        else:
            lost = self.held - still
            if lost:
                log.warning(
                    "lost the lease on deliveries %s: another node may send them; not sending",
                    sorted(lost),
                )
            self.held &= still
        if not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self._every, self._due)
