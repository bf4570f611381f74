"""How long one large MLLP frame holds up the ACKs of another connection.

Starts ``run.py serve`` (one MLLP channel, no destinations, SQLite) as ``bench/mllp.py``
does. One connection sends small messages one after another, each after its ACK; while
it does, a second connection sends one frame of ``--size`` MB and waits for its ACK. For
each of ``--rounds`` large frames, prints the longest ACK wait on the small connection
during the large frame, and as a reference the longest in as long a quiet stretch
before it, as JSON. A measure, not a test: the figures move with the machine's load.

    .venv/bin/python bench/ack_gap.py --size 9 --rounds 3 [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mllp import Profiling, engine_process, fresh_store, make_messages, profiler  # bench/mllp.py

from router.connectors.mllp.framing import END, frame


def big_message(size: int, control_id: str) -> bytes:
    """An ORU^R01 of about ``size`` bytes: one OBX with a long text value per 64 KiB."""
    head = (
        "MSH|^~\\&|BIG|LAB|TIE|TRUST|20240101000000||ORU^R01|"
        f"{control_id}|P|2.5\rPID|1||123^^^NHS||DOE^JOHN\rOBR|1|||REPORT\r"
    ).encode()
    line = b"OBX|1|TX|REPORT||" + b"x" * 65536 + b"\r"
    return head + line * max(1, (size - len(head)) // len(line))


async def scenario(port: int, size: int, rounds: int, ca: Path | None) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    small_r, small_w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    big_r, big_w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    waits: list[tuple[float, float]] = []  # (ACK time, how long it took)
    stop = asyncio.Event()

    async def steady() -> None:
        for data, _ in make_messages("gap", 0, 10_000_000):
            if stop.is_set():
                return
            started = time.perf_counter()
            small_w.write(data)
            await small_r.readuntil(END)
            now = time.perf_counter()
            waits.append((now, now - started))

    def longest(since: float, until: float) -> float:
        return max((w for t, w in waits if since <= t <= until), default=0.0)

    def when_longest(since: float, until: float) -> float:
        """When the longest wait in the span began, from ``since``."""
        found = max(((w, t) for t, w in waits if since <= t <= until), default=(0.0, since))
        return found[1] - found[0] - since

    sender = asyncio.create_task(steady())
    results = []
    try:
        await asyncio.sleep(1.0)  # warm up
        for n in range(rounds):
            data = frame(big_message(size, f"BIG-{n}"))
            await asyncio.sleep(1.0)  # the last large frame's processing is over
            quiet = time.perf_counter()
            await asyncio.sleep(1.0)
            began = time.perf_counter()
            big_w.write(data)
            ack = await asyncio.wait_for(big_r.readuntil(END), 120)
            ended = time.perf_counter()
            await asyncio.sleep(0.3)  # the small connection's answer held up may come after
            results.append(
                {
                    "big_ack_s": round(ended - began, 4),
                    "big_ack_code": ack.split(b"MSA|", 1)[1][:2].decode(),
                    "longest_small_ack_during_s": round(longest(began, ended + 0.3), 4),
                    "longest_small_ack_began_after_s": round(when_longest(began, ended + 0.3), 4),
                    "longest_small_ack_quiet_s": round(longest(quiet, began), 4),
                }
            )
    finally:
        stop.set()
        await sender
        small_w.close()
        big_w.close()
    return {"size_bytes": len(big_message(size, "BIG-0")), "rounds": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=float, default=9.0, help="large frame, MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="the source over TLS")
    parser.add_argument(
        "--ports", type=int, nargs=2, metavar=("MLLP", "HTTP"), help="default: free ones"
    )
    parser.add_argument("--profile", type=Path, help="py-spy's profile of the engine here")
    parser.add_argument("--profile-format", default="raw", choices=("raw", "speedscope"))
    parser.add_argument("--sampling", default="gil", choices=("gil", "wall"))
    args = parser.parse_args(argv)
    spy = Profiling(args.profile, args.profile_format, args.sampling) if args.profile else None
    with (
        tempfile.TemporaryDirectory(prefix="tie-gap-") as folder,
        fresh_store("sqlite", Path(folder)) as url,
        engine_process(
            Path(folder), url, None, profiler(spy, "ack_gap"), tls=args.tls, ports=args.ports
        ) as engine,
    ):
        ca = engine.ca if args.tls else None
        result = asyncio.run(scenario(engine.port, int(args.size * 2**20), args.rounds, ca))
    json.dump({"tls": args.tls, **result}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
