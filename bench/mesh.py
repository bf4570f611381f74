"""MESH benchmarks against NHS England's mesh-sandbox, printing one JSON document.

- ``round_trip``: small messages from a GP mailbox to the hub; ``run.py serve`` polls
  them, stores them and forwards each over MESH to a DPS mailbox. Timed from the
  first send until the last one is in the DPS inbox.
- ``extract``: one large GP extract (1 GiB by default) through the whole DPS
  handoff (the example channels): received, stored, validated, forwarded to DPS;
  a fake DPS answers with JSON Lines; the CSVs reach PCSE. Timed, with the
  engine's peak resident memory (``VmHWM`` of its process), which must stay
  within 200 MB.

The engine runs as its own process (``run.py serve``), the sandbox in
``.venv-mesh-sandbox`` (``make install``). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mesh_testing import DPS, HUB, LAB, PCSE, SHARED_KEY, MeshSandbox, SmtpRelay  # noqa: E402

from router.units import parse_size  # noqa: E402

GP = LAB
RSS_LIMIT = 200 * 1024 * 1024
CHUNK = 20 * 1024 * 1024
RECORD = (
    b"DOW~1~1111111,1234~LNA~20200406~1340~1557492~1234567890~SOMEBODY~JOHN~SOMEONE~MR~1~"
    b"20020101~FLAT A~THE STREET\nDOW~2~~EAST~~E1   1AA~~3~~~\n"
)


def log(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def write_extract(path: Path, size: int) -> int:
    """A GP extract of about ``size`` bytes: the header line, then patient record pairs."""
    block = RECORD * (1024 * 1024 // len(RECORD))
    written = 0
    with path.open("wb") as out:
        out.write(b"503\\*\n")
        while written < size:
            out.write(block)
            written += len(block)
    return path.stat().st_size


class Engine:
    """``run.py serve`` with the DPS handoff channels, and its peak memory watched."""

    def __init__(self, work: Path, sandbox: MeshSandbox, smtp_port: int, poll: str) -> None:
        channels = work / "channels"
        channels.mkdir()
        for name in ("gp-extract-intake", "dps-results"):
            data = yaml.safe_load(
                (ROOT / "examples/dps-handoff/channels" / f"{name}.yaml").read_text()
            )
            data["source"]["mesh"]["interval"] = poll
            for dest in data["destinations"].values():
                if "smtp" in dest:
                    dest["smtp"].update(host="127.0.0.1", port=smtp_port)
            (channels / f"{name}.yaml").write_text(yaml.safe_dump(data))
        forward = {
            "name": "round-trip",
            "source": {"mesh": {"mailbox": "hub", "interval": poll, "workflows": ["BENCH_SMALL"]}},
            "destinations": {
                "dps": {"mesh": {"mailbox": "hub", "to": DPS, "workflow_id": "BENCH_SMALL_FWD"}}
            },
        }
        (channels / "round-trip.yaml").write_text(yaml.safe_dump(forward))
        config = {
            "store": f"sqlite:///{work / 'tie.db'}",
            "channels": "channels",
            "mappings": str(ROOT / "mappings"),
            "http": {"host": "127.0.0.1", "port": 0},
            "dispatch": {"poll_interval": "100ms"},
            "mesh": {
                "mailboxes": {
                    "hub": {
                        "url": sandbox.url,
                        "mailbox": HUB,
                        "password": {"env": "TIE_BENCH_MESH_PASSWORD"},
                        "shared_key": {"env": "TIE_BENCH_MESH_KEY"},
                        "max_chunk_size": CHUNK,
                    }
                }
            },
        }
        (work / "engine.yaml").write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "TIE_BENCH_MESH_PASSWORD": "password",
            "TIE_BENCH_MESH_KEY": SHARED_KEY,
            "TIE_DPS_PROCESSING_DATE": "2020-04-10",
        }
        self._log = (work / "engine.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "--config", str(work / "engine.yaml"), "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the engine process has had, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self._log.close()


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not happen within {timeout}s")


def round_trip(sandbox: MeshSandbox, count: int) -> dict[str, Any]:
    log(f"round trip: {count} small messages GP -> hub -> tie -> DPS")
    started = time.perf_counter()
    with sandbox.client(GP) as gp:
        for n in range(count):
            gp.send_message(HUB, f"small message {n}\n".encode(), workflow_id="BENCH_SMALL")
    sent = time.perf_counter()

    def arrived() -> bool:
        with sandbox.client(DPS) as dps:
            return sum(1 for _ in dps.iterate_message_ids()) >= count

    wait(arrived, 600, "small messages reaching DPS")
    elapsed = time.perf_counter() - started
    sandbox.reset(DPS)
    return {
        "messages": count,
        "seconds": round(elapsed, 3),
        "sending_seconds": round(sent - started, 3),
        "messages_per_second": round(count / elapsed, 1),
    }


def fake_dps(sandbox: MeshSandbox) -> tuple[str, int]:
    """Read the extract DPS got, streaming, and answer with a small JSON Lines result."""
    with sandbox.client(DPS) as dps:
        mesh_id = wait(
            lambda: dps.list_messages(),
            float(os.environ.get("TIE_BENCH_WAIT", "1800")),
            "the extract reaching DPS",
        )[0]
        request = dps.retrieve_message(mesh_id)
        size, patients = 0, 0
        while block := request.read(CHUNK):
            size += len(block)
            patients += block.count(b"DOW~1~")
        lines = [
            {
                "type": "header",
                "version": 1,
                "job_id": request.local_id,
                "practice": request.filename.split("_")[0],
                "filename": request.filename,
            },
            {
                "type": "difference",
                "record": {
                    "nhsNumber": "1234567890",
                    "ruleId": "MN-BR-DB-01",
                    "guidance": "Manual Validation",
                },
            },
            {"type": "summary", "patients": patients},
        ]
        body = "".join(json.dumps(line) + "\n" for line in lines).encode()
        dps.send_message(HUB, body, workflow_id="LISTREC_DPS_RESULT", local_id=request.local_id)
        dps.acknowledge_message(mesh_id)
        return mesh_id, size


def extract(
    sandbox: MeshSandbox, engine: Engine, relay: SmtpRelay, work: Path, size: int
) -> dict[str, Any]:
    path = work / "A82023_GPR4LNA1.CSA"
    actual = write_extract(path, size)
    log(f"extract: {actual} bytes through the DPS handoff")
    started = time.perf_counter()
    with sandbox.client(GP, max_chunk_size=CHUNK) as gp, path.open("rb") as data:
        gp.send_message(HUB, data, workflow_id="LISTREC_GP_EXTRACT", filename=path.name)
    uploaded = time.perf_counter()
    path.unlink()
    _, forwarded = fake_dps(sandbox)
    at_dps = time.perf_counter()

    def csvs() -> bool:
        with sandbox.client(PCSE) as pcse:
            return sum(1 for _ in pcse.iterate_message_ids()) >= 3

    wait(csvs, 600, "the CSV files reaching PCSE")
    wait(lambda: relay.received, 60, "the summary email")
    done = time.perf_counter()
    peak = engine.peak_rss()
    return {
        "bytes": actual,
        "forwarded_bytes": forwarded,
        "forwarded_unchanged": forwarded == actual,
        "upload_to_hub_seconds": round(uploaded - started, 2),
        "hub_to_dps_seconds": round(at_dps - uploaded, 2),
        "results_to_pcse_seconds": round(done - at_dps, 2),
        "total_seconds": round(done - started, 2),
        "engine_peak_rss_bytes": peak,
        "engine_peak_rss_mb": round(peak / 1024 / 1024, 1),
        "within_200_mb": peak <= RSS_LIMIT,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200, help="messages in the round trip")
    parser.add_argument("--size", default="1GiB", help="size of the GP extract (e.g. 100MB)")
    parser.add_argument("--poll", default="250ms", help="the engine's MESH poll interval")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tie-bench-mesh-") as tmp:
        work = Path(tmp)
        sandbox = MeshSandbox(work / "sandbox" if (work / "sandbox").mkdir() is None else work)
        relay = SmtpRelay()
        engine = Engine(work, sandbox, relay.port, args.poll)
        try:
            results = {
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "round_trip": round_trip(sandbox, args.small) if args.small else None,
                "extract": extract(sandbox, engine, relay, work, parse_size(args.size)),
            }
        except BaseException:
            log("engine log:\n" + (work / "engine.log").read_text()[-4000:])
            raise
        finally:
            engine.stop()
            sandbox.stop()
            relay.stop()
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if results["extract"]["within_200_mb"] else 1


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
