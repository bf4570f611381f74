"""Time the dashboard, /metrics' store queries, searches and bulk dry runs on a filled store.

Fill the store first with ``bench/fill_store.py`` (its channels and types are what this
asks for). Prints JSON: each figure the best of three runs (a dry run: one), in ms, with
the store's pages in the cache, so it measures what each query reads, not the disk::

    .venv/bin/python bench/store_queries.py --store sqlite:////tmp/big.db
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from fill_store import CHANNELS  # bench/fill_store.py, beside this script

from router import replay
from router.console.statistics import dashboard
from router.metrics import QueueCollector
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.queries import MessageFilter, search


def _best(fn: Callable[[], Any], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="SQLAlchemy URL of a filled store")
    store = Store(parser.parse_args().store)
    now = utcnow()

    def found(f: MessageFilter) -> Callable[[], Any]:
        def run() -> Any:
            with store.read() as conn:
                return search(conn, f)

        return run

    with store.read() as conn:
        ids = replay.matching_messages(conn, MessageFilter(status="processed", limit=10_000))
        sent = replay.deliveries_of(conn, ids, status="sent").ids
    cases: dict[str, tuple[Callable[[], Any], int]] = {
        "dashboard (console /, /api/channels)": (lambda: dashboard(store, list(CHANNELS)), 3),
        "/metrics queue and backlog gauges": (lambda: list(QueueCollector(store).collect()), 3),
        "messages --since 10d --until 9d": (
            found(MessageFilter(since=now - timedelta(days=10), until=now - timedelta(days=9))),
            3,
        ),
        "messages --since 30d --until 25d": (
            found(MessageFilter(since=now - timedelta(days=30), until=now - timedelta(days=25))),
            3,
        ),
        "messages --type SIU (none stored)": (found(MessageFilter(message_type="SIU")), 3),
        f"reprocess dry run, {len(ids)} messages": (lambda: replay.plan_reprocess(store, ids), 1),
        f"resend dry run, {len(sent)} deliveries": (lambda: replay.plan_resend(store, sent), 1),
    }
    figures = {name: round(_best(fn, runs)) for name, (fn, runs) in cases.items()}
    print(json.dumps(figures, indent=1))
    store.dispose()


if __name__ == "__main__":
    main()
