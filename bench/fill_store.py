"""Fill a store with many messages, fast, to measure searches and overview pages at scale.

Not a test and not the engine's write path: rows go straight into the tables (SQLite by
``executemany`` with the store's own types, PostgreSQL by ``COPY``), so a million
messages take a minute or two, not the hours ingest would. The store is migrated first.

What it writes, spread evenly over the last ``--days`` days up to now:

- ``--messages`` messages over four channels, six MSH-9 types, each a small ER7 message
  with its own MSH-10 (``MSG000000001``...); one in 100 is ``error``, one in 100
  ``filtered``, the rest ``processed`` (the newest 200 of one channel ``received``, a
  backlog);
- one delivery per processed message: ``sent``, but one in 500 ``failed`` and one in
  1000 ``retrying`` (with a last error), and the newest 500 ``queued``;
- one correlation value (the placer order) per message.

    .venv/bin/python bench/fill_store.py --store sqlite:////tmp/big.db --messages 1000000
    .venv/bin/python bench/fill_store.py \\
        --store 'postgresql+psycopg://root@127.0.0.1:5432/test?options=-csearch_path%3Dbig'

Then point an engine.yaml's ``store:`` (or ``TIE_STORE``) at the same URL and time the
commands (``run.py messages ...``) or the console's pages.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table

from router.store.database import Store
from router.store.migrate import upgrade
from router.store.schema import correlations, deliveries, messages

CHANNELS = ("lab-orders", "lab-results", "adt-feed", "pathology")
TYPES = ("ORU^R01", "OML^O21", "ADT^A01", "ADT^A08", "ORM^O01", "ADT^A03")
CHUNK = 20_000


def _message(i: int, at: datetime, status: str) -> dict[str, Any]:
    kind = TYPES[i % len(TYPES)]
    raw = (
        f"MSH|^~\\&|EPR|HOSP|LAB|HOSP|{at:%Y%m%d%H%M%S}||{kind}|MSG{i:09d}|P|2.5.1\r"
        f"PID|1||{943_000_0000 + i}^^^NHS^NH||DOE^JANE\rORC|NW|ORD{i // 2}\r"
    ).encode()
    return {
        "id": i,
        "uuid": f"00000000-0000-4000-8000-{i:012d}",
        "channel": CHANNELS[i % len(CHANNELS)],
        "received_at": at,
        "status": status,
        "content_type": "application/hl7-v2",
        "message_type": kind,
        "control_id": f"MSG{i:09d}",
        "sender": "EPR",
        "size": len(raw),
        "raw": raw,
        "error": "PID-3: no patient identifier" if status == "error" else None,
        "processed_at": None if status == "received" else at + timedelta(seconds=1),
    }


def _delivery(i: int, at: datetime, status: str) -> dict[str, Any]:
    return {
        "id": i,
        "message_id": i,
        "channel": CHANNELS[i % len(CHANNELS)],
        "destination": "lab",
        "status": status,
        "content_type": "application/hl7-v2",
        "payload": b"MSH|^~\\&|TIE|HOSP|LAB|HOSP\r",
        "ordering_key": f"P{i % 97}",
        "attempts": 0 if status == "queued" else 1,
        "next_attempt_at": at + timedelta(seconds=1),
        "created_at": at + timedelta(seconds=1),
        "updated_at": at + timedelta(seconds=2),
        "last_error": "connection refused" if status in ("failed", "retrying") else None,
    }


def rows(count: int, days: float) -> Iterator[tuple[list[dict], list[dict], list[dict]]]:
    """Chunks of (messages, deliveries, correlations), oldest first."""
    now = datetime.now(UTC)
    step = timedelta(days=days) / count
    start = now - timedelta(days=days)
    for first in range(1, count + 1, CHUNK):
        chunk: tuple[list[dict], list[dict], list[dict]] = ([], [], [])
        for i in range(first, min(first + CHUNK, count + 1)):
            at = start + step * i
            status = "error" if i % 100 == 0 else "filtered" if i % 100 == 1 else "processed"
            if i > count - 800 and i % len(CHANNELS) == 2 and status == "processed":
                status = "received"
            chunk[0].append(_message(i, at, status))
            chunk[2].append({"message_id": i, "key": "placer_order", "value": f"ORD{i // 2}"})
            if status != "processed":
                continue
            sent = "failed" if i % 500 == 3 else "retrying" if i % 1000 == 7 else "sent"
            chunk[1].append(_delivery(i, at, "queued" if i > count - 500 else sent))
        yield chunk


def _copy(store: Store, table: Table, data: list[dict]) -> None:
    """PostgreSQL's COPY, through the store's own driver connection."""
    columns = list(data[0])
    raw = store.writer.raw_connection()
    try:
        with raw.cursor() as cur:  # type: ignore[attr-defined]
            names = ", ".join(columns)
            with cur.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                for row in data:
                    copy.write_row([row[c] for c in columns])
        raw.commit()
    finally:
        raw.close()


def fill(store: Store, count: int, days: float) -> None:
    for chunk in rows(count, days):
        if store.is_sqlite:
            with store.begin() as conn:
                for table, data in zip((messages, deliveries, correlations), chunk, strict=True):
                    if data:
                        conn.execute(table.insert(), data)
        else:
            for table, data in zip((messages, deliveries, correlations), chunk, strict=True):
                if data:
                    _copy(store, table, data)
    with store.begin() as conn:
        if not store.is_sqlite:
            for table in ("messages", "deliveries", "correlations"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
        conn.exec_driver_sql("ANALYZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="SQLAlchemy URL of an empty store")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()
    store = Store(args.store, synchronous="OFF") if args.store.startswith("sqlite") else None
    store = store or Store(args.store)
    upgrade(store)
    started = time.perf_counter()
    fill(store, args.messages, args.days)
    seconds = round(time.perf_counter() - started, 1)
    print(json.dumps({"messages": args.messages, "seconds": seconds}))
    store.dispose()


if __name__ == "__main__":
    main()
