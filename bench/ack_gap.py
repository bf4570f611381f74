"""How long one large message holds up the ACKs of another MLLP connection.

Starts ``run.py serve`` (one MLLP channel, no destinations, SQLite) as ``bench/mllp.py``
does. One connection sends small messages one after another, each after its ACK; while
it does, a second connection sends one frame of ``--size`` MB and waits for its ACK
(``--large fhir``: a FHIR ``$process-message`` Bundle of that size, carrying a PDF as a
Binary, is posted to a second channel's HTTP source instead). For each of ``--rounds``
large messages, prints the longest ACK wait on the small connection during the large one,
and as a reference the longest in as long a quiet stretch before it, and how the large
one was stored (inline, or as a blob), as JSON. A measure, not a test: the figures move
with the machine's load.

    .venv/bin/python bench/ack_gap.py --size 9 --rounds 3 [--tls] [--large fhir]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
from mllp import Profiling, engine_process, fresh_store, make_messages, profiler  # bench/mllp.py

from router.connectors.mllp.framing import END, frame

ROOT = Path(__file__).resolve().parents[1]
REFERRAL = ROOT / "tests" / "data" / "bars" / "servicerequest-request_validation.json"
FHIR_CHANNEL = "name: fhir\nsource: {http: {auth: none}}\n"


def big_message(size: int, control_id: str) -> bytes:
    """An ORU^R01 of about ``size`` bytes: one OBX with a long text value per 64 KiB."""
    head = (
        "MSH|^~\\&|BIG|LAB|TIE|TRUST|20240101000000||ORU^R01|"
        f"{control_id}|P|2.5\rPID|1||123^^^NHS||DOE^JOHN\rOBR|1|||REPORT\r"
    ).encode()
    line = b"OBX|1|TX|REPORT||" + b"x" * 65536 + b"\r"
    return head + line * max(1, (size - len(head)) // len(line))


def big_bundle(size: int, bundle_id: str) -> bytes:
    """A BaRS referral Bundle of about ``size`` bytes: the sample with a Binary (a "PDF",
    base64) added, as a referral with a letter attached would be."""
    document = json.loads(REFERRAL.read_text())
    document["id"] = bundle_id
    pdf = b"%PDF-1.4 " + b"x" * (size * 3 // 4)
    binary = {"resourceType": "Binary", "contentType": "application/pdf"}
    binary["data"] = base64.b64encode(pdf).decode()
    document["entry"].append({"fullUrl": f"urn:uuid:{uuid4()}", "resource": binary})
    return json.dumps(document).encode()


class Large:
    """Sends the large message one way or the other and waits for its answer."""

    def __init__(self, kind: str, port: int, http_port: int, tls: ssl.SSLContext | None):
        self.kind, self._port, self._http_port, self._tls = kind, port, http_port, tls

    async def __aenter__(self) -> Large:
        if self.kind == "mllp":
            self._r, self._w = await asyncio.open_connection("127.0.0.1", self._port, ssl=self._tls)
        else:
            self._http = httpx.AsyncClient(timeout=120)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "mllp":
            self._w.close()
        else:
            await self._http.aclose()

    def make(self, size: int, n: int) -> bytes:
        if self.kind == "mllp":
            return frame(big_message(size, f"BIG-{n}"))
        return big_bundle(size, str(uuid4()))

    async def send(self, data: bytes) -> str:
        """Send ``data``; the answer's code (MSA-1, or the HTTP status)."""
        if self.kind == "mllp":
            self._w.write(data)
            ack = await asyncio.wait_for(self._r.readuntil(END), 120)
            return ack.split(b"MSA|", 1)[1][:2].decode()
        url = f"http://127.0.0.1:{self._http_port}/fhir/fhir/$process-message"
        answer = await self._http.post(
            url, content=data, headers={"Content-Type": "application/fhir+json"}
        )
        return str(answer.status_code)


def stored(store_url: str, channel: str) -> list[dict[str, Any]]:
    """How the large messages were stored: their size inline and their blob, if any."""
    from sqlalchemy import func, select

    from router.store.database import Store
    from router.store.schema import messages

    store = Store(store_url)
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(messages.c.size, func.length(messages.c.raw), messages.c.blob_sha256)
                .where(messages.c.channel == channel)
                .order_by(messages.c.id)
            )
            return [{"size": s, "inline": i, "blob": b is not None} for s, i, b in rows]
    finally:
        store.dispose()


async def scenario(
    port: int, http_port: int, size: int, rounds: int, ca: Path | None, kind: str
) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
    small_r, small_w = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
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
        async with Large(kind, port, http_port, tls) as large:
            for n in range(rounds):
                data = large.make(size, n)
                await asyncio.sleep(1.0)  # the last large message's processing is over
                quiet = time.perf_counter()
                await asyncio.sleep(1.0)
                began = time.perf_counter()
                code = await large.send(data)
                ended = time.perf_counter()
                await asyncio.sleep(0.3)  # the small connection's answer held up may come after
                results.append((began, ended, quiet, code))
    finally:
        stop.set()
        await sender
        small_w.close()
    rounds_out = [
        {
            "big_ack_s": round(ended - began, 4),
            "big_ack_code": code,
            "longest_small_ack_during_s": round(longest(began, ended + 0.3), 4),
            "longest_small_ack_began_after_s": round(when_longest(began, ended + 0.3), 4),
            "longest_small_ack_quiet_s": round(longest(quiet, began), 4),
        }
        for began, ended, quiet, code in results
    ]
    return {"size_bytes": len(Large(kind, 0, 0, None).make(size, 0)), "rounds": rounds_out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=float, default=9.0, help="large frame, MB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", action="store_true", help="the source over TLS")
    parser.add_argument(
        "--large", default="mllp", choices=("mllp", "fhir"), help="how the large one is sent"
    )
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
            Path(folder),
            url,
            None,
            profiler(spy, "ack_gap"),
            tls=args.tls,
            ports=args.ports,
            extra={"fhir.yaml": FHIR_CHANNEL},
        ) as engine,
    ):
        ca = engine.ca if args.tls else None
        size = int(args.size * 2**20)
        result = asyncio.run(
            scenario(engine.port, engine.http_port, size, args.rounds, ca, args.large)
        )
        result["stored"] = stored(url, "bench" if args.large == "mllp" else "fhir")
        result["stored"] = [r for r in result["stored"] if r["size"] > size // 2]
    json.dump({"tls": args.tls, "large": args.large, **result}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
