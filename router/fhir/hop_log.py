"""A synchronous hop that failed (BaRS ``forward``, the booking proxy's ``provider``), logged.

Nothing retries such a hop: the sender is answered 502 or 504 and repeats the request
itself. Without a line here an operator watching the log saw nothing while a receiver was
down, where a queued delivery's failures are logged (router.delivery_log). One WARNING per
failure names the channel, the destination, the receiver's origin and the message
(``run.py show <uuid>``); a flood to the same receiver is counted, not written, within a
window (router.repeat_log). No content: the URL's path and query (a proxied request's may
carry a patient's identifiers) and its user info are left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from router.outage_log import REMIND_EVERY
from router.repeat_log import RepeatLog


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: where it goes, without what it carries."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


class HopLog:
    """The log lines of failed synchronous hops, one a receiver per window."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repeats = RepeatLog(log, every=every, clock=clock)

    def failed(
        self, channel: str, destination: str, url: str, message: str, status: int, reason: str
    ) -> None:
        """The sender of ``message`` was answered ``status`` because of ``reason``."""
        where = origin(url)
        self._repeats.warning(
            (channel, destination, where),
            "%s/%s: message %s not delivered to %s, the sender was answered %d and repeats "
            "it if it will: %s",
            channel,
            destination,
            message,
            where,
            status,
            reason.replace(url, where),
        )
