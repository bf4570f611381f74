"""FHIR over HTTP: process-message latency and throughput against bare validation, and the
booking proxy's overhead against calling the provider directly.

Run ``python bench/fhir.py`` (see ``--help``); it prints one JSON document on stdout and
its progress on stderr. In one run it measures:

- ``validation``: fhir.resources (R4B) parsing and validating the benchmark Bundle in
  this process: ``json.loads`` + ``Bundle.model_validate``, what the engine does once.
  It is measured before, between and after the scenarios (``rounds``), and each
  scenario is compared with the rounds either side of it: on a shared machine the
  same validation's CPU time drifts by a third within minutes;
- ``process_message.accept``: ``POST /fhir/<channel>/$process-message`` on a dispatched
  channel: checked, validated, committed, answered 202;
- ``process_message.bars``: the same on a BaRS routing channel: also committed with its
  delivery, forwarded to a receiver that answers 200 at once, answered with its answer;
- ``proxy``: the same GET of a provider's Slot search, directly and through
  ``/proxy/<provider URL>``, one after the other on kept-alive connections.

The engine (``run.py serve``), the receiving services and this load generator run in
separate processes. Targets (issue 3): the engine adds at most 25% to validation at p50
(``process_message.accept.added_over_validation``; for BaRS routing beyond the
receiver's own round trip, ``process_message.bars.added_beyond_receiver_over_validation``,
as the receiver's time is not tie's), and the proxy at most 2 ms at p50
(``proxy.added_p50_ms``); ``targets`` says whether this run met them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import http.client
import json
import multiprocessing as mp
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

# This file is bench/fhir.py: its folder must not hide the fhir package (fhir.resources).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import httpx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "bars" / "servicerequest-request_validation.json"
PG_URL = os.environ.get("TIE_BENCH_POSTGRES", "postgresql+psycopg://root@127.0.0.1:5432/test")
SPAWN = mp.get_context("spawn")
HEADERS = {"Content-Type": "application/fhir+json"}
SEARCH = "urn:nhs:names:services:careconnect:fhir:rest:search:slot"
SLOTS = json.dumps(
    {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": {"resourceType": "Slot", "id": "slot-1", "status": "free"}}],
    }
).encode()


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the message ---------------------------------------------------------------------


def bundle(entries: int) -> dict[str, Any]:
    """The BaRS validation referral, padded with Observations to ``entries`` entries."""
    document = json.loads(SAMPLE.read_text())
    observation = next(
        e for e in document["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    while len(document["entry"]) < entries:
        extra = copy.deepcopy(observation)
        extra["fullUrl"] = f"urn:uuid:{uuid4()}"
        document["entry"].append(extra)
    return document


def bodies(document: dict[str, Any], count: int) -> Iterator[bytes]:
    """``count`` copies with distinct Bundle ids and ServiceRequests (each a new referral)."""
    service_request = "236bb75d-90ef-461f-b71e-fde7f899802c"  # the sample's, by fullUrl
    for _ in range(count):
        document["id"] = str(uuid4())
        yield json.dumps(document).replace(service_request, str(uuid4())).encode()


Round = tuple[list[float], float]  # validation: each message's wall time, CPU seconds in all


def validated(body: bytes) -> float:
    """Bare validation of ``body`` in this process (what a worker does): seconds."""
    from fhir.resources.R4B.bundle import Bundle

    start = time.perf_counter()
    Bundle.model_validate(json.loads(body))
    return time.perf_counter() - start


def validation_round(payloads: list[bytes]) -> Round:
    """``json.loads`` and the R4B Bundle model over the messages the engine will be sent."""
    for body in payloads[:10]:
        validated(body)
    cpu = time.thread_time()
    times = [validated(body) for body in payloads]
    return times, time.thread_time() - cpu


def validation_cost(rounds: list[Round]) -> dict[str, float]:
    """Wall time and CPU time per message (CPU time is steadier on a busy host)."""
    times = [t for round_times, _ in rounds for t in round_times]
    cpu = sum(round_cpu for _, round_cpu in rounds)
    return stats(times) | {
        "per_second": round(len(times) / sum(times), 1),
        "cpu_ms": round(cpu * 1000 / len(times), 3),
    }


def stats(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
    }


# --- peers -------------------------------------------------------------------------


def peer_main(port: int) -> None:
    """The receiving service and the provider: answer at once, like the fastest peer."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        body = SLOTS if scope["method"] == "GET" else b"{}"
        headers = [(b"content-type", b"application/fhir+json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")


@contextlib.contextmanager
def peer(port: int) -> Iterator[None]:
    process = SPAWN.Process(target=peer_main, args=(port,), daemon=True)
    process.start()
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1))
        yield
    finally:
        process.terminate()
        process.join(10)


def wait_for(probe: Callable[[], Any], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            probe()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# --- the engine --------------------------------------------------------------------


@contextlib.contextmanager
def engine(folder: Path, store_url: str, peer_port: int) -> Iterator[tuple[int, int]]:
    """``run.py serve`` with three channels and a directory pointing at the peer."""
    http_port = free_port()
    channels = folder / "channels"
    channels.mkdir()
    # auth: none, as the figures in docs/performance.md were measured: a sender's token
    # (the default) adds one indexed store read per request.
    (channels / "accept.yaml").write_text("name: accept\nsource: {http: {auth: none}}\n")
    (channels / "bars.yaml").write_text(
        "name: bars\nsource: {http: {auth: none, bars: {timeout: 30s}}}\n"
    )
    (channels / "booking-proxy.yaml").write_text(
        "name: booking-proxy\nsource: {proxy: {auth: none}}\n"
    )
    base = f"http://127.0.0.1:{peer_port}"
    (folder / "endpoints.yaml").write_text(
        json.dumps(
            {
                "endpoints": [
                    {"dos": "111111111", "fhir": base, "interactions": ["servicerequest-request"]},
                    {"asid": "200000000115", "fhir": f"{base}/STU3", "interactions": [SEARCH]},
                    {"asid": "200000000116", "fhir": f"{base}/c", "interactions": [SEARCH]},
                ]
            }
        )
    )
    (folder / "engine.yaml").write_text(
        json.dumps(
            {
                "store": store_url,
                "channels": "channels",
                "mappings": ".",
                "http": {"host": "127.0.0.1", "port": http_port},
                "node": "bench",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TIE_STORE", "TIE_CONFIG")}
    log_path = folder / "engine.log"
    command = [sys.executable, str(ROOT / "run.py"), "serve", "--config", "engine.yaml"]
    with open(log_path, "wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, env=env, cwd=folder)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health"))
        yield http_port, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        if process.returncode not in (0, -signal.SIGTERM):
            log(f"engine log: {log_path.read_text()[-2000:]}")


@contextlib.contextmanager
def fresh_store(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'tie.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"tie_bench_{uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


# --- load --------------------------------------------------------------------------


class Poster:
    """One kept-alive connection posting messages one after another. The standard
    library's client: its own cost per request is a third of httpx's, and what is
    measured here is the engine's."""

    def __init__(self, url: str, expect: int) -> None:
        parts = urllib.parse.urlsplit(url)
        self._path, self._expect, self._url = parts.path, expect, url
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def post(self, body: bytes) -> float:
        """The request's latency in seconds."""
        start = time.perf_counter()
        self._connection.request("POST", self._path, body=body, headers=HEADERS)
        response = self._connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - start
        if response.status != self._expect:
            raise RuntimeError(f"{self._url}: {response.status} {answer[:300]!r}")
        return elapsed

    def close(self) -> None:
        self._connection.close()


def post_all(url: str, payloads: list[bytes], expect: int) -> list[float]:
    """Each message's latency, posted one after another on one connection."""
    poster = Poster(url, expect)
    try:
        return [poster.post(body) for body in payloads]
    finally:
        poster.close()


def sequential(
    url: str, payloads: list[bytes], expect: int, receiver: str | None
) -> dict[str, Any]:
    """Latency on one connection, each request paired with a bare validation of the same
    body just before it (and, for a routed message, with the same POST straight to the
    receiver): the machine's speed drifts within seconds, and a pair sees the same."""
    engine = Poster(url, expect)
    direct = Poster(receiver, 200) if receiver is not None else None
    times: dict[str, list[float]] = {"engine": [], "validation": [], "receiver": []}
    try:
        for body in payloads:
            times["validation"].append(validated(body))
            if direct is not None:
                times["receiver"].append(direct.post(body))
            times["engine"].append(engine.post(body))
    finally:
        engine.close()
        if direct is not None:
            direct.close()
    result: dict[str, Any] = stats(times["engine"]) | {"messages": len(payloads)}
    result["paired_validation"] = stats(times["validation"])
    if direct is not None:
        result["paired_receiver"] = stats(times["receiver"])
    return result


def scenario(
    url: str, payloads: list[bytes], connections: int, expect: int, receiver: str | None = None
) -> dict[str, Any]:
    """Latency with one connection (paired, see ``sequential``), then throughput with
    ``connections`` at once."""
    warm_up = min(20, len(payloads) // 10)
    post_all(url, payloads[:warm_up], expect)
    if receiver is not None:
        post_all(receiver, payloads[:warm_up], 200)
    half = len(payloads) // 2
    one = sequential(url, payloads[warm_up:half], expect, receiver)
    rest = payloads[half:]
    shares = [rest[i::connections] for i in range(connections)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        results = list(pool.map(lambda share: post_all(url, share, expect), shares))
    elapsed = time.perf_counter() - start
    concurrent_times = [t for r in results for t in r]
    return {
        "sequential": one,
        "concurrent": stats(concurrent_times)
        | {
            "connections": connections,
            "messages": len(rest),
            "per_second": round(len(rest) / elapsed, 1),
        },
    }


def proxy_overhead(tie_port: int, peer_port: int, requests: int) -> dict[str, Any]:
    direct_url = f"http://127.0.0.1:{peer_port}/STU3/Slot?status=free"
    proxied_url = f"http://127.0.0.1:{tie_port}/proxy/{direct_url}"

    def run(url: str, count: int) -> list[float]:
        times = []
        with httpx.Client(timeout=60) as client:
            for _ in range(count):
                headers = {
                    "Ssp-TraceID": str(uuid4()),
                    "Ssp-From": "200000000116",
                    "Ssp-To": "200000000115",
                    "Ssp-InteractionID": SEARCH,
                }
                start = time.perf_counter()
                response = client.get(url, headers=headers)
                times.append(time.perf_counter() - start)
                if response.status_code != 200 or response.content != SLOTS:
                    raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
        return times

    run(direct_url, 50)
    run(proxied_url, 50)
    direct, proxied = [], []
    for _ in range(4):  # interleaved, so drift hits both alike
        direct += run(direct_url, requests // 4)
        proxied += run(proxied_url, requests // 4)
    d, p = stats(direct), stats(proxied)
    return {
        "requests": len(direct),
        "direct": d,
        "proxied": p,
        "added_p50_ms": round(p["p50_ms"] - d["p50_ms"], 3),
        "added_p99_ms": round(p["p99_ms"] - d["p99_ms"], 3),
    }


def cpu_seconds(pid: int) -> float:
    """CPU time a process and its live descendants (the engine's validation workers) have
    used so far, all their threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children.update(int(c) for c in (task / "children").read_text().split())
    return own + sum(cpu_seconds(child) for child in children if Path(f"/proc/{child}").exists())


@contextlib.contextmanager
def engine_cpu(pid: int, result: dict[str, Any], requests: int) -> Iterator[None]:
    """The engine's CPU milliseconds per request: what a scenario costs it, load or not."""
    start = cpu_seconds(pid)
    yield
    result["engine_cpu_ms_per_request"] = round((cpu_seconds(pid) - start) * 1000 / requests, 3)


def added(result: dict[str, Any], validation: dict[str, float]) -> None:
    """What the engine adds to validation at p50, against the validations paired with its
    requests (``sequential``); for a routed message also beyond the receiver's own round
    trip (the same POST straight to it), which is the receiver's time, not tie's. And in
    CPU per request, against the validation rounds either side of the scenario
    (``validation``): CPU time drifts less than wall time on a shared machine."""
    one = result["sequential"]
    p50, bare = one["p50_ms"], one["paired_validation"]["p50_ms"]
    result["added_p50_ms"] = round(p50 - bare, 3)
    result["added_over_validation"] = round(p50 / bare - 1, 3)
    if "paired_receiver" in one:
        own = p50 - one["paired_receiver"]["p50_ms"]
        result["added_beyond_receiver_p50_ms"] = round(own - bare, 3)
        result["added_beyond_receiver_over_validation"] = round(own / bare - 1, 3)
    cpu = result["engine_cpu_ms_per_request"]
    result["added_cpu_ms"] = round(cpu - validation["cpu_ms"], 3)
    result["added_cpu_over_validation"] = round(cpu / validation["cpu_ms"] - 1, 3)


def machine() -> dict[str, Any]:
    import fhir.resources
    import pydantic

    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "fhir.resources": fhir.resources.__version__,
        "pydantic": pydantic.VERSION,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per scenario")
    parser.add_argument("--entries", type=int, default=30, help="entries in the Bundle")
    parser.add_argument("--connections", type=int, default=8, help="for throughput")
    parser.add_argument("--proxy-requests", type=int, default=2000)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args(argv)

    document = bundle(args.entries)
    payloads = list(bodies(document, args.messages))
    log(f"validation of a {args.entries}-entry Bundle ({len(payloads[0])} bytes)")
    sample = payloads[: min(len(payloads), 300)]
    rounds = [validation_round(sample)]
    result: dict[str, Any] = {
        "machine": machine(),
        "store": args.store,
        "bundle": {"entries": args.entries, "bytes": len(payloads[0])},
    }
    peer_port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="tie-bench-fhir-") as tmp,
        fresh_store(args.store, Path(tmp)) as store_url,
        peer(peer_port),
        engine(Path(tmp), store_url, peer_port) as (tie_port, pid),
    ):
        base = f"http://127.0.0.1:{tie_port}/fhir"
        log(f"process-message, dispatched: {args.messages} messages")
        accept: dict[str, Any] = {}
        with engine_cpu(pid, accept, args.messages):
            accept |= scenario(f"{base}/accept/$process-message", payloads, args.connections, 202)
        log("validation again")
        rounds.append(validation_round(sample))
        log(f"process-message, BaRS routing: {args.messages} messages")
        routed = list(bodies(document, args.messages))
        bars: dict[str, Any] = {}
        with engine_cpu(pid, bars, args.messages):
            receiver = f"http://127.0.0.1:{peer_port}/$process-message"
            bars |= scenario(
                f"{base}/bars/$process-message", routed, args.connections, 200, receiver
            )
        log("validation again")
        rounds.append(validation_round(sample))
        log(f"proxy: {args.proxy_requests} requests each way")
        proxy: dict[str, Any] = {}
        with engine_cpu(pid, proxy, args.proxy_requests + 50):
            proxy |= proxy_overhead(tie_port, peer_port, args.proxy_requests)
    result["validation"] = validation_cost(rounds) | {
        "rounds_cpu_ms": [round(cpu * 1000 / len(sample), 3) for _, cpu in rounds]
    }
    for i, scenario_result in enumerate((accept, bars)):
        around = validation_cost(rounds[i : i + 2])
        scenario_result["validation_around"] = around
        added(scenario_result, around)
    result["process_message"] = {"accept": accept, "bars": bars}
    result["proxy"] = proxy
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = {
        "accept_added_at_most_25_percent": accept["added_over_validation"] <= 0.25,
        "bars_added_at_most_25_percent": bars["added_beyond_receiver_over_validation"] <= 0.25,
        "proxy_added_at_most_2_ms_p50": proxy["added_p50_ms"] <= 2.0,
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
