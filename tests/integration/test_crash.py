"""kill -9 while 1,000 messages flow: nothing acknowledged is lost (DESIGN.md §3).

The real engine runs as ``run.py serve --config <tmp>/engine.yaml``. Sending
systems (python-hl7 asyncio connections) behave as real ones do: they re-send
every message that was not acknowledged. The downstream laboratory (python-hl7's
MLLP server) keeps running across the crash.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path

import hl7
import hl7.mllp
import httpx
import pytest
import yaml
from sqlalchemy import func, select
from tie_testing import Hl7Receiver, free_ports, wait_until

from router.store.database import Store
from router.store.schema import deliveries, messages

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 1000
KILL_AFTER = 300
CONNECTIONS = 4


class EngineProcess:
    """``run.py serve`` in a subprocess, with its output kept in a log file."""

    def __init__(self, config: Path, http_port: int, log: Path) -> None:
        self.config, self.http_port, self.log = config, http_port, log

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "run.py"), "--config", str(self.config), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.config.parent,
            )
        wait_until(self._ready, timeout=30, interval=0.05)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"engine exited early:\n{self.log.read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=1).is_success
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Senders:
    """Sending systems on CONNECTIONS connections; a message counts once it got AA."""

    def __init__(self, port: int, outgoing: dict[str, str]) -> None:
        self.port = port
        self.unacked = dict(outgoing)
        self.acked: set[str] = set()

    async def send_unacked(self, on_ack: Callable[[int], None] = lambda _n: None) -> None:
        """One pass over every unacknowledged message; a broken connection ends its worker."""
        queue = deque(sorted(self.unacked))
        await asyncio.gather(*(self._worker(queue, on_ack) for _ in range(CONNECTIONS)))

    async def _worker(self, queue: deque[str], on_ack: Callable[[int], None]) -> None:
        try:
            reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", self.port)
        except OSError:
            return
        try:
            while queue:
                control_id = queue.popleft()
                writer.writemessage(self.unacked[control_id])
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), 30)
                msa = ack.segment("MSA")
                if str(msa[1]) == "AA" and str(msa[2]) == control_id:
                    self.acked.add(control_id)
                    del self.unacked[control_id]
                    on_ack(len(self.acked))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            writer.close()


def order(i: int) -> str:
    control_id = f"CRASH{i:04d}"
    return "\r".join(
        [
            f"MSH|^~\\&|EPR|RXX|LAB|RYY|20240101120000||OML^O21^OML_O21|{control_id}|P|2.5.1",
            f"PID|1||{9000000000 + i}^^^NHS^NH||PATIENT^TEST{i}",
            f"ORC|NW|ORD{i:05d}",
            f"OBR|1|ORD{i:05d}||FBC^Full blood count^L",
        ]
    )


def write_config(tmp_path: Path, store_url: str, lab_port: int) -> tuple[Path, int, int]:
    mllp_port, http_port = free_ports(2)
    (tmp_path / "channels").mkdir()
    (tmp_path / "mappings").mkdir()
    engine = {
        "store": store_url,
        "channels": "channels",
        "mappings": "mappings",
        "http": {"host": "127.0.0.1", "port": http_port},
        "node": "crash-test",
        "dispatch": {"poll_interval": "100ms", "lease": "5s"},
    }
    orders = {
        "name": "orders",
        "source": {"mllp": {"host": "127.0.0.1", "port": mllp_port}},
        "destinations": {
            "lab": {
                "mllp": {"host": "127.0.0.1", "port": lab_port, "ack_timeout": "10s"},
                "retry": {"max_attempts": 50, "backoff": ["100ms", "1s"]},
            }
        },
    }
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(engine))
    (tmp_path / "channels" / "orders.yaml").write_text(yaml.safe_dump(orders))
    return tmp_path / "engine.yaml", mllp_port, http_port


def settled(store: Store) -> bool:
    """Every message processed and every delivery finished."""
    with store.read() as conn:
        unprocessed = conn.scalar(
            select(func.count()).select_from(messages).where(messages.c.status == "received")
        )
        unsent = conn.scalar(
            select(func.count()).select_from(deliveries).where(deliveries.c.status != "sent")
        )
    return unprocessed == 0 and unsent == 0


def test_kill_9_while_messages_flow_loses_nothing_acknowledged(
    tmp_path, store_url, record_property
):
    lab = Hl7Receiver()
    config, mllp_port, http_port = write_config(tmp_path, store_url, lab.port)
    engine = EngineProcess(config, http_port, tmp_path / "engine.log")
    outgoing = {f"CRASH{i:04d}": order(i) for i in range(TOTAL)}
    senders = Senders(mllp_port, outgoing)
    store = Store(store_url)
    try:
        engine.start()

        def kill_at(count: int) -> None:
            if count == KILL_AFTER:
                engine.kill()

        asyncio.run(senders.send_unacked(kill_at))
        assert len(senders.acked) >= KILL_AFTER, engine.log.read_text()
        assert engine.process.wait(15) == -signal.SIGKILL
        assert senders.unacked, "the kill must interrupt the flow"
        acked_before_kill = set(senders.acked)

        engine.start()
        passes = 0
        while senders.unacked and passes < 5:
            asyncio.run(senders.send_unacked())
            passes += 1
        assert not senders.unacked, f"never acknowledged: {sorted(senders.unacked)[:10]}"

        wait_until(lambda: settled(store), timeout=60, interval=0.1)
        with store.read() as conn:
            stored_ids = list(conn.scalars(select(messages.c.control_id)))
            statuses = set(conn.scalars(select(deliveries.c.status).distinct()))
            undelivered = conn.scalar(
                select(func.count())
                .select_from(messages)
                .where(~messages.c.id.in_(select(deliveries.c.message_id)))
            )
        assert acked_before_kill <= set(stored_ids), "an ACKed message was lost in the crash"
        assert senders.acked == set(outgoing)
        assert senders.acked <= set(stored_ids)
        assert statuses == {"sent"}
        assert undelivered == 0

        downstream = lab.control_ids()
        assert set(downstream) <= set(outgoing), "the lab got an MSH-10 nobody sent"
        assert acked_before_kill <= set(downstream)
        assert senders.acked <= set(downstream)
        resent = len(stored_ids) - len(set(stored_ids))
        duplicates = len(downstream) - len(set(downstream))
        record_property("stored_twice", resent)
        record_property("downstream_duplicates", duplicates)
        print(
            f"{store_url.split(':')[0]}: kill -9 after {KILL_AFTER} ACKs: {resent} message(s) "
            f"stored twice, {duplicates} duplicate(s) downstream"
        )
    finally:
        engine.stop()
        store.dispose()
        lab.stop()
