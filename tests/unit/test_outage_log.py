"""A retrying loop's failed rounds: a store outage once, then a reminder with a count every
few minutes, and its end; anything else each time with its traceback (router/outage_log.py)."""

from __future__ import annotations

import logging

import psycopg
from sqlalchemy.exc import OperationalError

from router.outage_log import OutageLog
from router.store.ingest import StoreUnavailable

log = logging.getLogger("tie.test.outage")


def logged(caplog) -> list[tuple[str, str, bool]]:
    return [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]


def test_an_outage_is_logged_once_and_its_end_while_other_failures_keep_their_traceback(caplog):
    rounds = OutageLog(log, "processing batch", clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(5):
            rounds.failed(StoreUnavailable("store unavailable: the writer stopped"))
        rounds.failed(RuntimeError("a bug"))
        rounds.failed(RuntimeError("a bug"))
        rounds.succeeded()
        rounds.succeeded()
        rounds.failed(StoreUnavailable("store unavailable: OperationalError"))
    assert logged(caplog) == [
        (
            "ERROR",
            "processing batch failed: store unavailable: the writer stopped; "
            "retrying quietly until the store commits again",
            False,
        ),
        ("ERROR", "processing batch failed; retrying shortly", True),
        ("ERROR", "processing batch failed; retrying shortly", True),
        (
            "INFO",
            "processing batch works again: the store commits (after 0 s, 5 failed round(s))",
            False,
        ),
        (
            "ERROR",
            "processing batch failed: store unavailable: OperationalError; "
            "retrying quietly until the store commits again",
            False,
        ),
    ]


def postgresql_down() -> OperationalError:
    """What SQLAlchemy raises on PostgreSQL when the server refuses the connection."""
    refused = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "Connection refused\n\tIs the server running on that host?"
    )
    return OperationalError(None, None, refused)


def test_postgresql_refusing_connections_is_an_outage_with_a_reminder_every_few_minutes(caplog):
    now = [0.0]
    rounds = OutageLog(log, "dispatch for orders/lab", remind_every=300, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(3600):  # an hour of rounds, one a second
            rounds.failed(postgresql_down())
            now[0] += 1
        rounds.succeeded()
    reason = (
        "store unavailable: OperationalError: connection failed: "
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused'
    )
    lines = logged(caplog)
    assert lines[0] == (
        "ERROR",
        f"dispatch for orders/lab failed: {reason}; retrying quietly until the store commits again",
        False,
    )
    assert lines[1] == (
        "ERROR",
        f"dispatch for orders/lab still failing after 300 s (301 failed round(s)): {reason}",
        False,
    )
    assert len(lines) == 1 + 11 + 1  # the first, a reminder every 5 minutes, the end
    assert lines[-1] == (
        "INFO",
        "dispatch for orders/lab works again: the store commits "
        "(after 3600 s, 3600 failed round(s))",
        False,
    )
