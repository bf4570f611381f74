"""Write transactions whose statement in flight another thread can cancel.

A stopping dispatch worker waits for its store call to end before the store closes; a
call stuck in one long statement (a claim's query planned badly over a big queue ran for
7 minutes) held the engine's stop for as long, until it was killed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection

from router.store.database import Store

T = TypeVar("T")
# A stopping worker (dispatch, the processor) or one a reload replaces waits this long for
# its store call in hand, then cancels the call's statement, and again each time this passes.
STOP_GRACE = 10.0


class Interruptible:
    """``store.run`` (a ``Transact``) whose running transactions ``cancel`` interrupts."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._running: list[Any] = []  # the driver connections of work in hand

    def __call__(self, work: Callable[[Connection], T]) -> T:
        def tracked(conn: Connection) -> T:
            driver = conn.connection.driver_connection
            with self._lock:
                self._running.append(driver)
            try:
                return work(conn)
            finally:
                with self._lock:
                    self._running.remove(driver)

        return self._store.run(tracked)

    def cancel(self) -> int:
        """From any thread: cancel the statement each running transaction has in flight (it
        fails, and its transaction rolls back); how many transactions were running."""
        with self._lock:
            for driver in self._running:
                if self._store.is_sqlite:
                    driver.interrupt()
                else:
                    driver.cancel()
            return len(self._running)
