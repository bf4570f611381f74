"""``logging: {format: json}``: ``run.py serve`` writes one JSON object a line, and a failed
delivery's line carries the ids that find its message, never the message's content."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from hl7.client import MLLPClient
from tie_testing import free_ports, wait_until

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "tests/data/hl7v2/OML_O21_nhs_nwgmsa_v251.hl7"


def test_the_json_log_is_one_object_a_line_with_a_failed_deliverys_ids(tmp_path):
    http, source, closed = free_ports(3)
    (tmp_path / "channels").mkdir()
    (tmp_path / "engine.yaml").write_text(
        yaml.safe_dump(
            {
                "store": "sqlite:///tie.db",
                "channels": "channels",
                "mappings": "mappings",
                "http": {"host": "127.0.0.1", "port": http},
                "logging": {"format": "json"},
            }
        )
    )
    (tmp_path / "channels/orders.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "orders",
                "source": {"mllp": {"host": "127.0.0.1", "port": source}},
                "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": closed}}},
            }
        )
    )
    log = tmp_path / "engine.log"
    command = [sys.executable, str(ROOT / "run.py"), "--config", str(tmp_path / "engine.yaml")]
    with log.open("wb") as out:
        engine = subprocess.Popen(
            [*command, "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until(lambda: _healthy(http, engine), timeout=30, interval=0.05)
        message = SAMPLE.read_text().replace("\n", "\r").strip("\r")
        with MLLPClient("127.0.0.1", source) as client:
            client.send_message(message)
        wait_until(lambda: "delivery_id" in log.read_text(), timeout=30)
    finally:
        engine.terminate()
        engine.wait(15)
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    (failed,) = [line for line in lines if "delivery_id" in line]
    assert failed["level"] == "WARNING"
    assert (failed["channel"], failed["destination"]) == ("orders", "lab")
    assert (
        f"delivery {failed['delivery_id']} (message {failed['message_id']})" in (failed["message"])
    )
    assert "CHISLETT" in message and "9449305552" in message
    assert "CHISLETT" not in text and "9449305552" not in text


def _healthy(port: int, engine: subprocess.Popen[bytes]) -> bool:
    assert engine.poll() is None, "the engine exited early"
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success
    except httpx.TransportError:
        return False
