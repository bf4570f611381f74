"""Time a bulk resend and a bulk reprocess by search, as support runs them after an outage.

Fills a fresh store (SQLite, and PostgreSQL in a private schema dropped afterwards) with
``--messages`` processed messages of one channel, each with one ``failed`` delivery, and
as many ``error`` messages of another; then runs, in this process, the commands an
operator types (``run.py resend --channel ... --reason ...`` and ``run.py reprocess
--channel ... --status error --reason ...``, stdout and the progress bar discarded) and
checks that each item was done once and audited once, and that the audit chain verifies.
Prints JSON: per store, items and items per second of each (its dry run too)::

    .venv/bin/python bench/replay.py --messages 20000
    .venv/bin/python bench/replay.py --messages 20000 --stores sqlite --rate 200
    .venv/bin/python bench/replay.py --messages 5000 --stores sqlite --profile /tmp/replay

``--rate`` is the commands' own (default here 0: no limit, to measure the work, not the
pause); ``--profile DIR`` writes a cProfile of each run (``DIR/<store>-<command>.pstats``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from mllp import fresh_store  # bench/mllp.py, beside this script
from sqlalchemy import func, select

from router import audit
from router.cli import main as run_py
from router.store.database import Store
from router.store.migrate import upgrade
from router.store.schema import audit_events, deliveries, messages

FAILED, ERRORS = "bench-failed", "bench-errors"
CHUNK = 5000
ENGINE_YAML = "store: sqlite:///unused.db\nchannels: channels\nmappings: mappings\n"


def _message(i: int, channel: str, status: str, at: datetime) -> dict[str, Any]:
    raw = f"MSH|^~\\&|EPR|HOSP|LAB|HOSP|{at:%Y%m%d%H%M%S}||ORU^R01|B{i:09d}|P|2.5.1\r".encode()
    return {
        "uuid": str(uuid4()),
        "channel": channel,
        "received_at": at,
        "status": status,
        "content_type": "application/hl7-v2",
        "message_type": "ORU^R01",
        "control_id": f"B{i:09d}",
        "sender": "EPR",
        "size": len(raw),
        "raw": raw,
        "error": "PID-3: no patient identifier" if status == "error" else None,
        "processed_at": at,
    }


def fill(store: Store, count: int) -> None:
    """``count`` processed messages each with a failed delivery, and ``count`` errors."""
    at = datetime.now(UTC) - timedelta(hours=1)
    for first in range(0, count, CHUNK):
        numbers = range(first, min(first + CHUNK, count))
        with store.begin() as conn:
            for channel, status in ((FAILED, "processed"), (ERRORS, "error")):
                conn.execute(messages.insert(), [_message(i, channel, status, at) for i in numbers])
            ids = conn.scalars(
                select(messages.c.id)
                .where(messages.c.channel == FAILED)
                .order_by(messages.c.id.desc())
                .limit(len(numbers))
            ).all()
            conn.execute(
                deliveries.insert(),
                [
                    {
                        "message_id": message_id,
                        "channel": FAILED,
                        "destination": "lab",
                        "status": "failed",
                        "content_type": "application/hl7-v2",
                        "payload": b"MSH|^~\\&|TIE|HOSP|LAB|HOSP\r",
                        "idempotency_key": f"K{message_id}",
                        "attempts": 10,
                        "next_attempt_at": at,
                        "created_at": at,
                        "updated_at": at,
                        "last_error": "connection refused",
                    }
                    for message_id in ids
                ],
            )
    with store.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def _run_py(config: Path, args: list[str], profile: Path | None) -> float:
    """Seconds ``run.py args`` took, in this process, its output discarded."""
    sink = io.StringIO()
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        if profiler:
            profiler.enable()
        code = run_py(["--config", str(config), *args])
        if profiler:
            profiler.disable()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"run.py {' '.join(args)} exited {code}:\n{sink.getvalue()[-2000:]}")
    if profiler and profile:
        profiler.dump_stats(profile)
    return seconds


def _figures(items: int, seconds: float) -> dict[str, Any]:
    return {"items": items, "seconds": round(seconds, 2), "items_per_s": round(items / seconds)}


def measure(url: str, kind: str, count: int, rate: float, profile: Path | None) -> dict[str, Any]:
    store = Store(url)
    upgrade(store)
    fill(store, count)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "engine.yaml"
        config.write_text(ENGINE_YAML)
        for folder in ("channels", "mappings"):
            (Path(tmp) / folder).mkdir()
        os.environ["TIE_STORE"] = url
        common = ["--reason", "bench: replay after an outage", "--rate", str(rate)]
        resend = ["resend", "--channel", FAILED, *common]
        reprocess = ["reprocess", "--channel", ERRORS, "--status", "error", *common]
        result = {}
        for name, args in (("resend", resend), ("reprocess", reprocess)):
            dry = _run_py(config, [*args, "--dry-run"], None)
            path = profile / f"{kind}-{name}.pstats" if profile else None
            seconds = _run_py(config, args, path)
            result[name] = {**_figures(count, seconds), "dry_run_s": round(dry, 2)}
    _check(store, count)
    store.dispose()
    return result


def _check(store: Store, count: int) -> None:
    """Every item done once and audited once; the chain verifies."""
    with store.read() as conn:
        resent = conn.scalar(select(func.count()).where(deliveries.c.resent_from.is_not(None)))
        copies = conn.scalar(select(func.count()).where(messages.c.reprocessed_from.is_not(None)))
        events = dict(
            conn.execute(
                select(audit_events.c.action, func.count()).group_by(audit_events.c.action)
            ).all()
        )
    assert (resent, copies) == (count, count), (resent, copies)
    assert events == {"resend": count, "reprocess": count}, events
    verdict = audit.verify(store)
    assert verdict.ok and verdict.events == 2 * count, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="items of each replay")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--rate", type=float, default=0.0, help="the commands' --rate")
    parser.add_argument("--profile", type=Path, help="folder for cProfile output")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"messages": args.messages, "rate": args.rate, "stores": {}}
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory() as folder, fresh_store(kind, Path(folder)) as url:
            result["stores"][kind] = measure(url, kind, args.messages, args.rate, args.profile)
        print(f"{kind}: done", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
