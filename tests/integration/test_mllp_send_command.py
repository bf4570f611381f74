"""python-hl7's ``mllp_send`` command as the sending system, the way an integrator tries tie out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hl7
from sqlalchemy import select
from tie_testing import RunningEngine, channel, engine_config, hl7_message, wait_until

from router.store.schema import messages

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


def mllp_send(port: int, *args: str) -> list[hl7.Message]:
    """Run the command; every answer it prints is one MLLP frame followed by a newline."""
    done = subprocess.run(
        [str(MLLP_SEND), "-p", str(port), *args, "127.0.0.1"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    frames = [f for f in done.stdout.split(b"\x1c\r\n") if f]
    assert all(f.startswith(b"\x0b") for f in frames), done.stdout
    return [hl7.parse(f[1:].decode()) for f in frames]


def answers(acks: list[hl7.Message]) -> list[tuple[str, str]]:
    return [(str(a.segment("MSA")[1]), str(a.segment("MSA")[2])) for a in acks]


def stored(running: RunningEngine) -> dict[str, tuple[bytes, str]]:
    with running.store.read() as conn:
        rows = conn.execute(select(messages.c.control_id, messages.c.raw, messages.c.status))
        return {cid: (raw, status) for cid, raw, status in rows}


def start(tmp_path: Path, store_url: str) -> RunningEngine:
    inbound = channel({"name": "inbound", "source": {"mllp": {"port": 0}}, "destinations": {}})
    return RunningEngine(engine_config(tmp_path, store_url), {"inbound": inbound})


def test_loose_file_with_crlf_lines_is_accepted_and_stored(tmp_path, store_url, hl7_samples):
    """``--loose`` sends a file as editors save it: messages one after another, CRLF lines."""
    ids = ["SEND-1", "SEND-2", "SEND-3"]
    sample = hl7_samples["ORU_R01_nhs_nwgmsa_v251"]
    path = tmp_path / "results.txt"
    path.write_bytes(b"".join(hl7_message(sample, i, separator=b"\r\n") for i in ids))
    running = start(tmp_path, store_url)
    try:
        acks = mllp_send(running.port("inbound"), "--loose", "-f", str(path))
        assert answers(acks) == [("CA", i) for i in ids]  # the sample asks for MSH-15 AL
        wait_until(lambda: {s for _raw, s in stored(running).values()} == {"processed"})
        rows = stored(running)
        assert sorted(rows) == ids
        for control_id in ids:  # mllp_send turned the CRLFs into CRs before sending
            assert rows[control_id][0] == hl7_message(sample, control_id).rstrip(b"\r")
    finally:
        running.stop()


def test_framed_file_gets_one_answer_per_message(tmp_path, store_url, hl7_samples):
    """A file of MLLP frames, a broken one among them (its standard input mode is broken on
    Python 3: it reads text where it needs bytes)."""
    good = [hl7_message(hl7_samples["ORU_R01_v24_python-hl7_GHH"], f"PIPE-{n}") for n in range(3)]
    bad = b"PID|1||9449305552^^^NHS^NH\r"
    path = tmp_path / "frames.mllp"
    path.write_bytes(b"".join(b"\x0b" + m + b"\x1c\r" for m in [good[0], bad, *good[1:]]))
    running = start(tmp_path, store_url)
    try:
        acks = mllp_send(running.port("inbound"), "-f", str(path))
        assert answers(acks) == [("AA", "PIPE-0"), ("AR", ""), ("AA", "PIPE-1"), ("AA", "PIPE-2")]
        rows = stored(running)
        assert {cid: raw for cid, (raw, _s) in rows.items() if cid} == {  # the last CR is stripped
            f"PIPE-{n}": m.rstrip(b"\r") for n, m in enumerate(good)
        }
        assert [s for cid, (_raw, s) in rows.items() if not cid] == ["error"]
    finally:
        running.stop()
