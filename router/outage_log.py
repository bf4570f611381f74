"""How a retrying loop (the processor, each dispatch worker) logs its failed rounds.

While the store cannot commit (``StoreUnavailable``: the group-commit writer failing, or
stopped until a restart) every round fails the same way, about once a second: a traceback
each time would bury the log at 3 a.m. So that is one ERROR line, without a traceback (the
writer logs the cause), when it starts, and one line when a round gets through again. Any
other failure is a bug or a new problem: logged with its traceback each time.
"""

from __future__ import annotations

import logging

from router.store.ingest import StoreUnavailable


class OutageLog:
    """The log lines of one loop's rounds; ``what`` names the loop ("processing batch")."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        self._log = log
        self._what = what
        self._down = False

    def failed(self, exc: Exception) -> None:
        if not isinstance(exc, StoreUnavailable):
            self._log.error("%s failed; retrying shortly", self._what, exc_info=exc)
        elif not self._down:
            self._down = True
            self._log.error(
                "%s failed: %s; retrying quietly until the store commits again", self._what, exc
            )

    def succeeded(self) -> None:
        """A round went through the store: the outage, if one was logged, is over."""
        if self._down:
            self._down = False
            self._log.info("%s works again: the store commits", self._what)
