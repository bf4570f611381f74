"""A retrying loop's failed rounds: a store outage once, not each round; anything else each
time with its traceback (router/outage_log.py)."""

from __future__ import annotations

import logging

from router.outage_log import OutageLog
from router.store.ingest import StoreUnavailable

log = logging.getLogger("tie.test.outage")


def test_an_outage_is_logged_once_and_its_end_while_other_failures_keep_their_traceback(caplog):
    rounds = OutageLog(log, "processing batch")
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(5):
            rounds.failed(StoreUnavailable("store unavailable: the writer stopped"))
        rounds.failed(RuntimeError("a bug"))
        rounds.failed(RuntimeError("a bug"))
        rounds.succeeded()
        rounds.succeeded()
        rounds.failed(StoreUnavailable("store unavailable: OperationalError"))
    logged = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert logged == [
        (
            "ERROR",
            "processing batch failed: store unavailable: the writer stopped; "
            "retrying quietly until the store commits again",
            False,
        ),
        ("ERROR", "processing batch failed; retrying shortly", True),
        ("ERROR", "processing batch failed; retrying shortly", True),
        ("INFO", "processing batch works again: the store commits", False),
        (
            "ERROR",
            "processing batch failed: store unavailable: OperationalError; "
            "retrying quietly until the store commits again",
            False,
        ),
    ]
