"""How one destination's worker logs its failed deliveries: by episode, not by attempt.

A receiver down for an hour fails every attempt of every delivery queued for it: a line
each was over a thousand lines a minute with a couple of hundred deliveries waiting. So a
destination's failures are an episode: the first retried attempt (WARNING) and the first
delivery failed for good (ERROR) are logged with their ids, the rest are counted, with a
reminder of the counts every ``REMIND_EVERY`` seconds while it lasts, and one line when a
delivery is sent again. Every line names the channel, the destination, the delivery and
its message (``run.py show <message>``); the whole history of attempts is in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from router.outage_log import REMIND_EVERY
from router.store.deliveries import Attempt


class DeliveryLog:
    """The log lines of one destination's recorded attempts."""

    def __init__(
        self,
        log: logging.Logger,
        channel: str,
        destination: str,
        *,
        remind_every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._where = f"{channel}/{destination}"
        self._fields = {"channel": channel, "destination": destination}
        self._remind_every = remind_every
        self._clock = clock
        self._failing_since: float | None = None
        self._reminded_at = 0.0
        self._retried = 0
        self._failed = 0

    def recorded(self, attempts: Iterable[tuple[Attempt, str]]) -> None:
        """Log a committed round: each attempt with its outcome (sent, retrying, failed)."""
        for attempt, outcome in attempts:
            if outcome == "sent":
                self._sent(attempt)
            elif outcome in ("retrying", "failed"):
                self._failure(attempt, outcome)

    def _failure(self, attempt: Attempt, outcome: str) -> None:
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = self._reminded_at = now
        first = (self._retried if outcome == "retrying" else self._failed) == 0
        if outcome == "retrying":
            self._retried += 1
        else:
            self._failed += 1
        if first:
            self._log.log(
                logging.WARNING if outcome == "retrying" else logging.ERROR,
                "%s: %s%s",
                self._where,
                _described(attempt, outcome),
                "; further failures to this destination are counted until one is sent",
                extra=self._ids(attempt),
            )
        elif now - self._reminded_at >= self._remind_every:
            self._reminded_at = now
            self._log.warning(
                "%s still failing after %d s: %s; last: %s",
                self._where,
                now - self._failing_since,
                self._counts(),
                _described(attempt, outcome),
                extra=self._ids(attempt),
            )

    def _sent(self, attempt: Attempt) -> None:
        if self._failing_since is None:
            return
        self._log.info(
            "%s works again: delivery %s (message %s) sent after %d s of failures: %s",
            self._where,
            attempt.delivery.id,
            attempt.delivery.message_id,
            self._clock() - self._failing_since,
            self._counts(),
            extra=self._ids(attempt),
        )
        self._failing_since = None
        self._retried = self._failed = 0

    def _ids(self, attempt: Attempt) -> dict[str, object]:
        """The line's ids as fields of their own, for the JSON log format."""
        delivery = attempt.delivery
        return {**self._fields, "delivery_id": delivery.id, "message_id": delivery.message_id}

    def _counts(self) -> str:
        return f"{self._retried} attempt(s) to be retried, {self._failed} failed for good"


def _described(attempt: Attempt, outcome: str) -> str:
    delivery = attempt.delivery
    number = delivery.attempts + 1
    what = (
        f"attempt {number} will be retried"
        if outcome == "retrying"
        else f"failed after {number} attempt(s)"
    )
    return f"delivery {delivery.id} (message {delivery.message_id}) {what}: {attempt.result.error}"
