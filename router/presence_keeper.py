"""Keeps the engine lock (router/store/presence.py) held while the engine runs.

A PostgreSQL restart, or a terminated backend, ends the session that holds it: the engine
reconnects for its work and runs on, but a ``run.py db restore`` would then be let in under
it. So every few seconds (one round trip, on no message's path) the keeper checks that the lock
is still held, and takes it again on a new connection when it is not. Each check also marks
the engine seen (router/store/presence.py): a restore refuses while that sighting is fresher
than ``FRESH_CHECKS`` checks, which covers the seconds between a lost session and the check
that takes the lock again.

When a restore got in first and holds it (or has replaced the store already), the engine
stops altogether rather than pausing: everything it holds from the old store (claimed
deliveries and their row ids, which the backup reuses for other deliveries; settled
revisions; the processor's and the dispatcher's state) would be written into the restored
store if it resumed afterwards. A fresh start reads the restored store as it is; an engine
started during the restore refuses to start until it has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy.exc import DBAPIError

from router.store.presence import EngineLock, StoreInUse

log = logging.getLogger(__name__)
INTERVAL = 2.0
FRESH_CHECKS = 3  # a sighting keeps a restore out for this many checks


class PresenceKeeper:
    """Checks ``lock`` every ``interval`` seconds; ``on_restore`` is called (once, with why)
    when a restore holds or replaced the store, and the checks end."""

    def __init__(
        self, lock: EngineLock, on_restore: Callable[[str], None], interval: float = INTERVAL
    ) -> None:
        self._lock = lock
        self._on_restore = on_restore
        self.interval = interval
        self._lost = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine lock keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await self.check():
                    return
            except Exception:
                log.exception("checking the engine lock failed; trying again")

    async def check(self) -> bool:
        """Whether the engine may go on: the lock is held, taken again, or cannot be taken
        again yet for want of the server (tried again at the next check)."""
        if await asyncio.to_thread(self._lock.held):
            return True
        if not self._lost:
            self._lost = True
            log.warning(
                "the engine lost its engine lock (the database ended its session: a restart?); "
                "taking it again; until then only its last sighting keeps run.py db restore out"
            )
        try:
            await asyncio.to_thread(self._lock.take)
        except StoreInUse as exc:
            reason = f"stopping the engine, which lost its engine lock: {exc}"
            log.error(reason)
            self._on_restore(reason)
            return False
        except DBAPIError:
            return True
        self._lost = False
        log.info("the engine took its engine lock again: run.py db restore is kept out")
        return True
