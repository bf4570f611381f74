"""Records of synchronous exchanges, written in batches off the answer's path.

The booking proxy and BaRS routing answer the sender as soon as the receiver has
answered; what the receiver answered is recorded afterwards. Records wait here for at
most ``linger`` seconds (or until ``batch`` of them are waiting) and are then written in
one job of the group commit, each in a savepoint of its own: one commit and one fsync
for many exchanges, instead of one each competing with the next request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from router.store.database import savepoint
from router.store.ingest import GroupCommitWriter

log = logging.getLogger(__name__)
Work = Callable[[Connection], Any]


class Recorder:
    def __init__(self, writer: GroupCommitWriter, *, linger: float = 0.02, batch: int = 200):
        self._writer = writer
        self._linger = linger
        self._batch = batch
        self._waiting: list[Work] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing: set[asyncio.Future[Any]] = set()

    def add(self, work: Work) -> None:
        """Queue ``work(conn)``; call on the event loop."""
        self._waiting.append(work)
        if len(self._waiting) >= self._batch:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        works, self._waiting = self._waiting, []
        if not works:
            return
        future = asyncio.wrap_future(self._writer.run_soon(lambda conn: _write_all(conn, works)))
        self._writing.add(future)
        future.add_done_callback(self._written)

    async def written(self) -> None:
        """Once what was queued so far is committed (or has failed): a read after this sees
        it, as the registry's searches must see the exchanges answered before them."""
        self.flush()
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)

    def _written(self, future: asyncio.Future[Any]) -> None:
        self._writing.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("exchange records could not be written: %s", future.exception())


def _write_all(conn: Connection, works: list[Work]) -> None:
    """All records under one savepoint; if one fails, each again under its own, so that
    only that one is lost."""
    try:
        with savepoint(conn, "tie_records"):
            for work in works:
                work(conn)
    except Exception:
        for work in works:
            try:
                with savepoint(conn, "tie_record"):
                    work(conn)
            except Exception:
                log.exception("an exchange record could not be written")
