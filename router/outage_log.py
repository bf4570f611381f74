"""How a retrying loop (the processor, each dispatch worker) logs its failed rounds.

While the store cannot commit or cannot be reached (``StoreUnavailable``: the group-commit
writer failing, or stopped until a restart; on PostgreSQL a refused or dropped connection)
every round fails the same way, about once a second: a traceback each time would bury the
log at 3 a.m. (tens of thousands of lines a minute). So that is one ERROR line, without a
traceback, when it starts, a reminder with the count of failed rounds every
``REMIND_EVERY`` seconds while it lasts, and one line when a round gets through again. Any
other failure is a bug or a new problem: logged with its traceback each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from router.store.database import StoreUnavailable, driver_reason, is_connection_problem

# How often an outage already logged is told again, with its count.
REMIND_EVERY = 300.0


def is_store_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached or cannot commit, not a bug."""
    return isinstance(exc, StoreUnavailable) or is_connection_problem(exc)


def outage_reason(exc: BaseException) -> str:
    """One line for the log: the driver's first line, without SQLAlchemy's SQL and link."""
    return str(exc) if isinstance(exc, StoreUnavailable) else driver_reason(exc)


class OutageLog:
    """The log lines of one loop's rounds; ``what`` names the loop ("processing batch")."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        remind_every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._remind_every = remind_every
        self._clock = clock
        self._down_since: float | None = None
        self._reminded_at = 0.0
        self._rounds = 0

    def failed(self, exc: Exception) -> None:
        if not is_store_outage(exc):
            self._log.error("%s failed; retrying shortly", self._what, exc_info=exc)
            return
        now = self._clock()
        self._rounds += 1
        if self._down_since is None:
            self._down_since = self._reminded_at = now
            self._log.error(
                "%s failed: %s; retrying quietly until the store commits again",
                self._what,
                outage_reason(exc),
            )
        elif now - self._reminded_at >= self._remind_every:
            self._reminded_at = now
            self._log.error(
                "%s still failing after %d s (%d failed round(s)): %s",
                self._what,
                now - self._down_since,
                self._rounds,
                outage_reason(exc),
            )

    def succeeded(self) -> None:
        """A round went through the store: the outage, if one was logged, is over."""
        if self._down_since is not None:
            self._log.info(
                "%s works again: the store commits (after %d s, %d failed round(s))",
                self._what,
                self._clock() - self._down_since,
                self._rounds,
            )
            self._down_since = None
            self._rounds = 0
