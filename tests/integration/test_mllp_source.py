"""The MLLP source against real senders (python-hl7's clients, raw sockets for bad bytes).

What is proven here is DESIGN.md §3.1 as a sender sees it: an ACK means the
message is committed, a store that cannot commit never yields AA, and no input,
however broken, stops the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from typing import Any
from uuid import uuid4

import hl7
import hl7.mllp
import pytest
from hl7.client import MLLPClient
from sqlalchemy import create_engine, func, make_url, select, text
from tie_testing import (
    Hl7Receiver,
    RunningEngine,
    channel,
    engine_config,
    hl7_message,
    wait_until,
)

from router.config import ChannelConfig
from router.store.schema import messages

GHH = "ORU_R01_v24_python-hl7_GHH"  # original mode: MSH-15 empty
START, END = b"\x0b", b"\x1c\r"
GUARD = 30.0  # seconds before a silent peer fails the test instead of hanging it


def inbound(**extra: Any) -> ChannelConfig:
    """A channel that only stores and processes what its MLLP listener receives."""
    mllp = {"port": 0, **extra.pop("mllp", {})}
    return channel({"name": "inbound", "source": {"mllp": mllp}, "destinations": {}, **extra})


def unframe(data: bytes) -> bytes:
    assert data.startswith(START) and data.endswith(END), data
    return data[1:-2]


def parse(ack: bytes) -> hl7.Message:
    return hl7.parse(ack.decode())


def field(message: hl7.Message, segment: str, number: int) -> str:
    return str(message.segment(segment)[number])


def local_address(sock: socket.socket) -> str:
    """This end of ``sock`` as the engine's log lines name its peer."""
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


LISTENER_LOG = "router.connectors.mllp.listener"


def listener_warnings(caplog: pytest.LogCaptureFixture) -> contextlib.AbstractContextManager:
    return caplog.at_level(logging.WARNING, logger=LISTENER_LOG)


def listener_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LISTENER_LOG]


def hl7_message_v25(control_id: str) -> bytes:
    """A small v2.5 ADT^A01, for tests that need no sample."""
    return f"MSH|^~\\&|EPR|RXX|LAB|RXX|20240101||ADT^A01|{control_id}|P|2.5\rPID|1".encode()


def rows_for(store: Any, control_id: str) -> list[Any]:
    with store.read() as conn:
        return list(
            conn.execute(
                select(messages).where(messages.c.control_id == control_id).order_by(messages.c.id)
            )
        )


def count(store: Any, *where: Any) -> int:
    with store.read() as conn:
        return conn.scalar(select(func.count()).select_from(messages).where(*where))


def read_frame(sock: socket.socket) -> bytes | None:
    """One whole MLLP frame from a raw socket, or None when the peer closed cleanly first."""
    data = b""
    while not data.endswith(END):
        chunk = sock.recv(65536)
        if not chunk:
            assert not data, f"connection closed inside a frame: {data!r}"
            return None
        data += chunk
    return unframe(data)


def assert_closed(sock: socket.socket) -> None:
    """The engine hung up: an orderly close, or a reset when it left input unread."""
    with contextlib.suppress(ConnectionResetError):
        assert read_frame(sock) is None


def raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(GUARD)
    return sock


def mllp_client(port: int) -> MLLPClient:
    """python-hl7's blocking client, which would otherwise wait forever for an answer."""
    sender = MLLPClient("127.0.0.1", port)
    sender.socket.settimeout(GUARD)
    return sender


@pytest.fixture
def engine(tmp_path: Any, store_url: str) -> Iterator[RunningEngine]:
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": inbound()})
    yield running
    running.stop()


# --- acknowledgements --------------------------------------------------------


def test_original_mode_ack_swaps_parties_and_follows_the_commit(engine, hl7_samples):
    with mllp_client(engine.port("inbound")) as sender:
        for n in range(10):
            control_id = f"ORIG-{n}"
            raw = hl7_message(hl7_samples[GHH], control_id)
            ack = unframe(sender.send_message(raw))
            rows = rows_for(engine.store, control_id)  # at once: the ACK promised a commit
            assert [r.raw for r in rows] == [raw]
            assert rows[0].status in ("received", "processed")
            assert rows[0].ack == ack
            original, answer = parse(raw), parse(ack)
            for ours, theirs in ((3, 5), (4, 6), (5, 3), (6, 4)):
                assert field(answer, "MSH", ours) == field(original, "MSH", theirs)
            assert field(answer, "MSH", 9) == "ACK^R01^ACK"
            assert field(answer, "MSH", 10) not in ("", control_id)
            assert field(answer, "MSH", 11) == field(original, "MSH", 11)
            assert field(answer, "MSH", 12) == field(original, "MSH", 12)
            assert field(answer, "MSA", 1) == "AA"
            assert field(answer, "MSA", 2) == control_id
            assert b"ERR" not in ack


def test_enhanced_mode_answers_as_msh15_asks(engine, hl7_samples):
    """AL and SU get CA; NE and ER get nothing on success, yet are stored."""

    async def conversation(port: int) -> list[bytes]:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
        acks = []
        try:
            for control_id, mode in (("E-NE", "NE"), ("E-ER", "ER"), ("E-AL", "AL")):
                writer.writeblock(hl7_message(hl7_samples[GHH], control_id, accept_ack=mode))
            await writer.drain()
            acks.append(await reader.readblock())
            writer.writeblock(hl7_message(hl7_samples[GHH], "E-SU", accept_ack="SU"))
            acks.append(await reader.readblock())
        finally:
            writer.close()
        return acks

    acks = asyncio.run(asyncio.wait_for(conversation(engine.port("inbound")), GUARD))
    al, su = (parse(a) for a in acks)
    # The first answer on the wire is for the AL message: NE and ER were never answered.
    assert [field(al, "MSA", 1), field(al, "MSA", 2)] == ["CA", "E-AL"]
    assert [field(su, "MSA", 1), field(su, "MSA", 2)] == ["CA", "E-SU"]
    for control_id in ("E-NE", "E-ER", "E-AL", "E-SU"):
        assert len(rows_for(engine.store, control_id)) == 1


def test_lf_and_crlf_segment_separators_are_accepted(engine, hl7_samples):
    with mllp_client(engine.port("inbound")) as sender:
        for control_id, separator in (("SEP-LF", b"\n"), ("SEP-CRLF", b"\r\n")):
            raw = hl7_message(hl7_samples[GHH], control_id, separator=separator)
            ack = unframe(sender.send_message(raw))
            assert b"\n" not in ack  # answered with CR, whatever the sender used
            assert [field(parse(ack), "MSA", n) for n in (1, 2)] == ["AA", control_id]
    for control_id in ("SEP-LF", "SEP-CRLF"):
        wait_until(lambda cid=control_id: rows_for(engine.store, cid)[0].status != "received")
        assert rows_for(engine.store, control_id)[0].status == "processed"


def test_idempotent_receiver_answers_repeats_with_the_original_ack(
    tmp_path, store_url, hl7_samples
):
    lab = Hl7Receiver()
    config = inbound(
        idempotent={"window": "1h"},
        destinations={"lab": {"mllp": {"host": "127.0.0.1", "port": lab.port}}},
    )
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": config})
    try:
        first = hl7_message(hl7_samples[GHH], "IDEM-1")
        with mllp_client(running.port("inbound")) as sender:
            original = sender.send_message(first)
        with mllp_client(running.port("inbound")) as sender:
            repeat = sender.send_message(first)
            assert repeat == original  # byte for byte: the stored ACK, not a new one
            later = sender.send_message(hl7_message(hl7_samples[GHH], "IDEM-2"))
            assert field(parse(unframe(later)), "MSA", 1) == "AA"
        # Delivery is ordered, so a second copy of IDEM-1 would arrive before IDEM-2.
        wait_until(lambda: "IDEM-2" in lab.control_ids())
        assert lab.control_ids() == ["IDEM-1", "IDEM-2"]
        rows = rows_for(running.store, "IDEM-1")
        assert [r.duplicate_of for r in rows] == [None, rows[0].id]
        assert rows[1].status == "filtered"
    finally:
        running.stop()
        lab.stop()


# --- broken input ------------------------------------------------------------


def _junk(rng: random.Random, size: int) -> bytes:
    """Random bytes that contain no MLLP framing byte, so the frame stays one frame."""
    return bytes(b for b in rng.randbytes(size) if b not in (0x0B, 0x1C))


def malformed_frames(sample: bytes, rng: random.Random) -> dict[str, tuple[bytes, str]]:
    """Framed input a well-behaved client never sends, and the reason the engine must give."""
    good = hl7_message(sample, f"BAD-{rng.randrange(10**9)}")
    return {
        "no MSH": (b"PID|1||9449305552^^^NHS^NH\rOBX|1|ST|x||y\r", "no MSH segment"),
        "wrong encoding characters": (
            good.replace(b"MSH|^~\\&|", b"MSH|^~|", 1),
            "invalid encoding characters",
        ),
        "repeated delimiter": (
            good.replace(b"MSH|^~\\&|", b"MSH|^^\\&|", 1),
            "invalid encoding characters",
        ),
        "binary junk": (b"\x00\xff" + _junk(rng, 300), "no MSH segment"),
        "empty MSH-10": (hl7_message(sample, ""), "empty MSH-10"),
        "second start byte, junk after it": (
            good[:40] + START + b"\x01\x02 not HL7 at all",
            "no MSH segment",
        ),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "no MSH",
        "wrong encoding characters",
        "repeated delimiter",
        "binary junk",
        "empty MSH-10",
        "second start byte, junk after it",
    ],
)
def test_malformed_frame_gets_ar_with_err_and_is_stored_with_its_reason(engine, hl7_samples, kind):
    data, reason = malformed_frames(hl7_samples[GHH], random.Random(kind))[kind]
    with raw_connection(engine.port("inbound")) as sock:
        sock.sendall(START + data + END)
        reject = read_frame(sock)
        assert reject is not None
        answer = parse(reject)
        assert field(answer, "MSA", 1) == "AR"
        assert reason in str(answer.segment("ERR"))
        # The same connection carries on.
        sock.sendall(START + hl7_message(hl7_samples[GHH], "AFTER-BAD") + END)
        ack = read_frame(sock)
        assert ack is not None and field(parse(ack), "MSA", 2) == "AFTER-BAD"
        assert field(parse(ack), "MSA", 1) == "AA"
    with engine.store.read() as conn:
        errors = list(conn.execute(select(messages).where(messages.c.status == "error")))
    assert len(errors) == 1
    assert reason in errors[0].error
    assert errors[0].ack == reject


def test_a_reject_with_a_readable_msh_goes_back_to_its_sender(engine, hl7_samples):
    """An empty MSH-10 is refused, but the AR still swaps sender and receiver."""
    with raw_connection(engine.port("inbound")) as sock:
        sock.sendall(START + hl7_message(hl7_samples[GHH], "") + END)
        reject = read_frame(sock)
    assert reject is not None
    answer = parse(reject)
    assert field(answer, "MSA", 1) == "AR"
    assert (field(answer, "MSH", 3), field(answer, "MSH", 5)) == ("GHH OE", "GHH LAB")


@pytest.mark.parametrize(
    ("msh_9", "msh_10", "location", "reason"),
    [("ADT^A01", "", "MSH^1^10", "empty MSH-10"), ("", "M-1", "MSH^1^9", "missing MSH-9")],
)
def test_a_missing_required_field_is_named_in_err(engine, msh_9, msh_10, location, reason):
    for version in ("2.5", "2.4"):  # ERR-2 and ERR-3 from 2.5, ERR-1 (ELD) before
        message = f"MSH|^~\\&|EPR|RXX|LAB|RXX|20240101||{msh_9}|{msh_10}|P|{version}\rPID|1"
        with raw_connection(engine.port("inbound")) as sock:
            sock.sendall(START + message.encode() + END)
            err = parse(read_frame(sock)).segment("ERR")
        if version == "2.5":
            assert (str(err[2]), str(err[3])) == (location, "101^Required field missing^HL70357")
        else:
            assert str(err[1]).startswith(f"{location}^101&{reason}")


@pytest.mark.parametrize("accept_ack", ["", "AL"])
def test_an_acknowledgement_is_stored_as_an_error_and_never_answered(engine, accept_ack):
    incoming = (
        f"MSH|^~\\&|LAB|RXX|EPR|RXX|20240101||ACK^A01^ACK|ACK-IN|P|2.5|||{accept_ack}\r"
        "MSA|AA|ORIG-1"
    ).encode()
    with raw_connection(engine.port("inbound")) as sock:
        sock.sendall(START + incoming + END)
        sock.sendall(START + hl7_message_v25("AFTER-ACK") + END)
        first_answer = parse(read_frame(sock))  # nothing came before the next one's
    assert field(first_answer, "MSA", 2) == "AFTER-ACK"
    (row,) = rows_for(engine.store, "ACK-IN")
    assert (row.status, row.ack, row.message_type) == ("error", None, "ACK^A01")
    assert row.error == "rejected: an acknowledgement (MSH-9 ACK) is neither answered nor routed"


@pytest.mark.parametrize("separator", [b"\r", b"\n"])
def test_two_messages_in_one_frame_are_rejected_together(engine, separator):
    """One ACK cannot answer two messages: the first is answered AR, neither is routed."""
    first, second = hl7_message_v25("PAIR-1"), hl7_message_v25("PAIR-2")
    note = b"\rNTE|1||MSH and more MSH|"  # MSH inside a field is no segment
    with raw_connection(engine.port("inbound")) as sock:
        sock.sendall(START + first + separator + second + END)
        answer = parse(read_frame(sock))
        sock.sendall(START + hl7_message_v25("ALONE") + note + END)
        alone = parse(read_frame(sock))
    assert [field(answer, "MSA", n) for n in (1, 2)] == ["AR", "PAIR-1"]
    err = answer.segment("ERR")
    assert (str(err[2]), str(err[3])) == ("MSH^2", "100^Segment sequence error^HL70357")
    assert [field(alone, "MSA", n) for n in (1, 2)] == ["AA", "ALONE"]
    (row,) = rows_for(engine.store, "PAIR-1")
    assert row.status == "error" and "more than one message in one frame" in row.error
    assert row.raw == first + separator + second


def test_nul_bytes_in_header_fields_fail_neither_the_commit_nor_processing(engine, hl7_samples):
    """PostgreSQL text cannot hold NUL: such a message must not turn into an endless AE (and
    AE for whatever shares its group commit), nor stall the processor behind it."""
    odd = hl7_message(hl7_samples[GHH], "NUL\x00ID").replace(b"GHH LAB", b"GHH\x00LAB", 1)
    with mllp_client(engine.port("inbound")) as sender:
        first = parse(unframe(sender.send_message(odd)))
        after = parse(unframe(sender.send_message(hl7_message(hl7_samples[GHH], "AFTER-NUL"))))
    assert field(first, "MSA", 1) == "AA"
    assert field(after, "MSA", 1) == "AA"

    def settled() -> list[Any]:
        with engine.store.read() as conn:
            rows = list(conn.execute(select(messages).order_by(messages.c.id)))
        return rows if all(r.status != "received" for r in rows) else []

    rows = wait_until(settled)
    assert [r.status for r in rows] == ["processed", "processed"]
    assert rows[0].raw == odd  # the raw bytes are kept exactly


def test_truncated_frame_is_closed_cleanly_and_not_acknowledged(engine, hl7_samples):
    raw = hl7_message(hl7_samples[GHH], "TRUNCATED")
    with raw_connection(engine.port("inbound")) as sock:
        sock.sendall(START + raw[: len(raw) // 2])
        sock.shutdown(socket.SHUT_WR)
        assert read_frame(sock) is None  # closed with no answer, and no reset
    with mllp_client(engine.port("inbound")) as sender:
        ack = parse(unframe(sender.send_message(hl7_message(hl7_samples[GHH], "WHOLE"))))
    assert field(ack, "MSA", 1) == "AA"
    assert count(engine.store) == 1
    assert rows_for(engine.store, "TRUNCATED") == []


def test_a_restarted_frame_abandons_the_unfinished_one(engine, hl7_samples):
    """A start byte inside a frame begins a new frame: the head was never acknowledged, so its
    sender must resend it; the complete message after the restart is answered on its own."""
    head = hl7_message(hl7_samples[GHH], "ABANDONED")
    whole = hl7_message(hl7_samples[GHH], "RESTARTED")
    with raw_connection(engine.port("inbound")) as sock:
        sock.sendall(START + head[:60] + START + whole + END)
        ack = read_frame(sock)
    assert ack is not None
    assert [field(parse(ack), "MSA", n) for n in (1, 2)] == ["AA", "RESTARTED"]
    assert [r.raw for r in rows_for(engine.store, "RESTARTED")] == [whole]
    assert rows_for(engine.store, "ABANDONED") == []


def test_badly_framed_bytes_are_logged_with_their_peer_and_size(engine, hl7_samples, caplog):
    """Neither answered nor stored, but not silent: one warning each, without their content."""
    lost_t1 = hl7_message(hl7_samples[GHH], "LOST-T1")
    lost_j1 = hl7_message(hl7_samples[GHH], "LOST-J1")
    with listener_warnings(caplog), raw_connection(engine.port("inbound")) as sock:
        peer = local_address(sock)
        sock.sendall(START + lost_t1 + START + hl7_message(hl7_samples[GHH], "T2") + END)
        assert field(parse(read_frame(sock)), "MSA", 2) == "T2"
        sock.sendall(lost_j1 + END + START + hl7_message(hl7_samples[GHH], "J2") + END)
        assert field(parse(read_frame(sock)), "MSA", 2) == "J2"
        sock.sendall(START + lost_t1[:100])
        sock.shutdown(socket.SHUT_WR)
        assert read_frame(sock) is None  # each line is logged before what follows it
    assert listener_lines(caplog) == [
        f"channel inbound: discarded {len(lost_t1) + 1} bytes from {peer} before a frame "
        "(a frame cut short by a new start byte)",
        f"channel inbound: discarded {len(lost_j1) + 2} bytes from {peer} before a frame "
        "(no start byte)",
        f"channel inbound: connection closed after 100 bytes of a frame from {peer}",
    ]
    assert rows_for(engine.store, "LOST-T1") == rows_for(engine.store, "LOST-J1") == []


def test_a_sender_reconnecting_with_unframed_bytes_is_one_warning_not_one_each(
    engine, hl7_samples, caplog
):
    """A client in a tight loop (connect, send without a start byte, hang up) is logged once
    for its host, not once a connection, which filled the log at ~12,000 lines a minute."""
    lost = hl7_message(hl7_samples[GHH], "LOOP")
    with listener_warnings(caplog):
        for _ in range(50):
            with raw_connection(engine.port("inbound")) as sock:
                host = local_address(sock).rsplit(":", 1)[0]
                sock.sendall(lost)
                sock.shutdown(socket.SHUT_WR)
                assert read_frame(sock) is None  # closed by the listener, after its line
    (line,) = listener_lines(caplog)
    assert line.startswith(
        f"channel inbound: connection closed after {len(lost)} bytes outside any frame from {host}:"
    )


def test_hundreds_of_malformed_frames_leave_the_listener_serving(engine, hl7_samples):
    port = engine.port("inbound")
    connections, frames_each = 8, 40

    def abuse(number: int) -> int:
        rng = random.Random(number)
        rejected = 0
        with raw_connection(port) as sock:
            for n in range(frames_each):
                kinds = malformed_frames(hl7_samples[GHH], rng)
                data, reason = kinds[rng.choice(sorted(kinds))]
                if n % 5 == 0:
                    sock.sendall(_junk(rng, 50))  # junk between frames is skipped silently
                sock.sendall(START + data + END)
                reject = read_frame(sock)
                assert reject is not None
                assert field(parse(reject), "MSA", 1) == "AR"
                assert reason in str(parse(reject).segment("ERR"))
                rejected += 1
            if number % 2:
                sock.sendall(START + hl7_message(hl7_samples[GHH], f"CUT-{number}")[:100])
                sock.shutdown(socket.SHUT_WR)
                assert read_frame(sock) is None
        return rejected

    with ThreadPoolExecutor(connections) as pool:
        rejected = sum(pool.map(abuse, range(connections)))
    assert rejected == connections * frames_each
    assert count(engine.store, messages.c.status == "error") == rejected
    with mllp_client(port) as sender:
        for n in range(20):
            ack = parse(unframe(sender.send_message(hl7_message(hl7_samples[GHH], f"OK-{n}"))))
            assert [field(ack, "MSA", 1), field(ack, "MSA", 2)] == ["AA", f"OK-{n}"]
    assert count(engine.store, messages.c.status != "error") == 20


def test_oversize_frame_gets_ar_and_the_connection_is_closed(tmp_path, store_url, hl7_samples):
    """And a frame under the limit but above the blob threshold is written to the blob
    store before its (then small) row is committed and acknowledged."""
    config = inbound(mllp={"max_frame": "64KB"})
    settings = engine_config(tmp_path, store_url, blobs={"threshold": "32KB"})
    running = RunningEngine(settings, {"inbound": config})
    try:
        padding = b"OBX|2|TX|note||" + b"A" * 100_000 + b"\r"
        huge = hl7_message(hl7_samples[GHH], "HUGE") + padding
        with raw_connection(running.port("inbound")) as sock:
            sock.sendall(START + huge + END)
            reject = read_frame(sock)
            assert reject is not None
            answer = parse(reject)
            assert [field(answer, "MSA", n) for n in (1, 2)] == ["AR", "HUGE"]
            assert (field(answer, "MSH", 3), field(answer, "MSH", 5)) == ("GHH OE", "GHH LAB")
            assert "larger than 64000" in str(answer.segment("ERR"))
            assert_closed(sock)
        (refused,) = rows_for(running.store, "HUGE")  # its head, found by its MSH-10
        assert (refused.status, refused.raw, refused.ack) == ("error", huge[:4096], reject)
        assert refused.error.startswith("rejected: frame of 100")
        assert "larger than 64000" in refused.error and "first 4096 bytes" in refused.error
        below = b"OBX|2|TX|note||" + b"A" * 60_000 + b"\r"
        raw = hl7_message(hl7_samples[GHH], "LARGE") + below
        with raw_connection(running.port("inbound")) as sock:  # MLLPClient may send a part
            sock.sendall(START + raw + END)
            ack = read_frame(sock)
        assert ack is not None and field(parse(ack), "MSA", 1) == "AA"
        (large,) = rows_for(running.store, "LARGE")
        assert (large.raw, large.size, large.blob_sha256) == (
            b"",
            len(raw),
            sha256(raw).hexdigest(),
        )
        assert running.store.blobs.path(large.blob_sha256).read_bytes() == raw
        wait_until(lambda: rows_for(running.store, "LARGE")[0].status == "processed")
    finally:
        running.stop()


@pytest.mark.parametrize(
    "head",
    [b"", b"MSH|^~\\&|LAB|RXX|EPR|RXX|20240101||ADT^A01|" + b"9" * 5000],
    ids=["no MSH", "MSH cut off"],
)
def test_an_oversize_frame_without_a_whole_msh_gets_the_generic_ar(tmp_path, store_url, head):
    """An MSH line the kept head does not end is not read: it could echo a cut MSH-10."""
    config = inbound(mllp={"max_frame": "8KB"})
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": config})
    try:
        with raw_connection(running.port("inbound")) as sock:
            sock.sendall(START + head + b"X" * 10_000 + END)
            reject = read_frame(sock)
            assert_closed(sock)
        assert reject is not None
        answer = parse(reject)
        assert [field(answer, "MSA", n) for n in (1, 2)] == ["AR", ""]
        assert field(answer, "MSH", 3) == "TIE"
        with running.store.read() as conn:
            (row,) = conn.execute(select(messages)).all()
        assert (row.status, row.control_id, row.raw) == ("error", None, (head + b"X" * 4096)[:4096])
    finally:
        running.stop()


def test_idle_connection_is_closed(tmp_path, store_url, hl7_samples):
    config = inbound(mllp={"idle_timeout": "200ms"})
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": config})
    try:
        with raw_connection(running.port("inbound")) as sock:
            assert read_frame(sock) is None  # the engine hung up on the silent peer
        with mllp_client(running.port("inbound")) as sender:
            ack = parse(unframe(sender.send_message(hl7_message(hl7_samples[GHH], "NEXT"))))
        assert field(ack, "MSA", 1) == "AA"
    finally:
        running.stop()


def test_a_peer_still_sending_a_frame_is_not_idle(tmp_path, store_url, hl7_samples):
    """A frame that takes longer than ``idle_timeout`` to arrive, on a link that is never
    silent for long, is received and answered (a large frame on a slow link)."""
    config = inbound(mllp={"idle_timeout": "500ms"})
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": config})
    try:
        data = START + hl7_message(hl7_samples[GHH], "TRICKLE") + END
        pieces = 15  # 1.5 s in all: longer than two idle timeouts
        step = -(-len(data) // pieces)
        with raw_connection(running.port("inbound")) as sock:
            for at in range(0, len(data), step):
                sock.sendall(data[at : at + step])
                time.sleep(0.1)  # the pace of a slow link, not a wait for the engine
            ack = read_frame(sock)
        assert ack is not None
        assert [field(parse(ack), "MSA", n) for n in (1, 2)] == ["AA", "TRICKLE"]
    finally:
        running.stop()


def test_a_peer_silent_in_the_middle_of_a_frame_is_idle(tmp_path, store_url, hl7_samples, caplog):
    config = inbound(mllp={"idle_timeout": "200ms"})
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": config})
    try:
        with listener_warnings(caplog), raw_connection(running.port("inbound")) as sock:
            peer = local_address(sock)
            sock.sendall(START + hl7_message(hl7_samples[GHH], "STALLED")[:50])
            assert read_frame(sock) is None  # hung up on, unanswered
        assert listener_lines(caplog) == [
            f"channel inbound: closing idle connection from {peer}, discarding 50 bytes of a frame"
        ]
    finally:
        running.stop()


def test_a_peer_that_never_reads_its_acks_is_cut_off_and_others_carry_on(
    tmp_path, store_url, hl7_samples
):
    """Its unread ACKs fill the socket: the engine stops reading from it (no unbounded
    buffer of answers), and once it has waited ``idle_timeout`` resets it."""
    config = inbound(mllp={"idle_timeout": "300ms"})
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": config})
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(GUARD)
        sock.connect(("127.0.0.1", running.port("inbound")))
        (listener,) = running.engine.listeners
        (connection,) = wait_until(lambda: list(listener._connections))
        # A small send buffer on the engine's side, as on a congested link: otherwise the
        # kernel takes some 4 MB of ACKs (25,000 messages) before it pushes back.
        engine_side = connection._transport.get_extra_info("socket")
        engine_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent = 0
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            while sent < 100_000:
                sock.sendall(START + hl7_message(hl7_samples[GHH], f"DEAF-{sent}") + END)
                sent += 1
        sock.close()
        stored = count(running.store, messages.c.control_id.like("DEAF-%"))
        assert 0 < stored < sent  # what it sent after its answers backed up was not read
        with mllp_client(running.port("inbound")) as sender:
            ack = parse(unframe(sender.send_message(hl7_message(hl7_samples[GHH], "NEXT"))))
        assert field(ack, "MSA", 1) == "AA"
    finally:
        running.stop()


# --- concurrency ---------------------------------------------------------------


def test_many_concurrent_connections_are_all_acknowledged_and_stored_once(engine, hl7_samples):
    clients, each = 20, 25

    async def sender(number: int, port: int) -> list[str]:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", port)
        answered = []
        try:
            for n in range(each):
                control_id = f"C{number}-{n}"
                writer.writeblock(hl7_message(hl7_samples[GHH], control_id))
                await writer.drain()
                ack = parse(await reader.readblock())
                assert field(ack, "MSA", 1) == "AA"
                answered.append(field(ack, "MSA", 2))
        finally:
            writer.close()
        return answered

    async def all_senders(port: int) -> list[list[str]]:
        together = asyncio.gather(*(sender(n, port) for n in range(clients)))
        return await asyncio.wait_for(together, GUARD)

    answered = asyncio.run(all_senders(engine.port("inbound")))
    assert answered == [[f"C{c}-{n}" for n in range(each)] for c in range(clients)]
    with engine.store.read() as conn:
        stored = list(conn.scalars(select(messages.c.control_id)))
    assert sorted(stored) == sorted(cid for ids in answered for cid in ids)


# --- the store cannot commit ---------------------------------------------------


def _send_while_down(port: int, sample: bytes, prefix: str) -> tuple[list[hl7.Message], bytes]:
    """Send original-mode, NE and ER messages to a store that cannot commit.

    Returns the answers (for the original-mode messages, the ER one and a final AL probe)
    and the bytes of an original-mode message to resend later.
    """
    answers = []
    with mllp_client(port) as sender:
        for n in range(3):
            answers.append(parse(unframe(sender.send_message(hl7_message(sample, f"{prefix}{n}")))))
        er = hl7_message(sample, f"{prefix}ER", accept_ack="ER")
        answers.append(parse(unframe(sender.send_message(er))))
        # NE asks for no answer at all: with nothing stored, closing is the only signal left.
        ne = hl7_message(sample, f"{prefix}NE", accept_ack="NE")
        sender.socket.sendall(START + ne + END)
        assert sender.socket.recv(1024) == b"", "the engine closes instead of staying silent"
    with mllp_client(port) as sender:
        probe = hl7_message(sample, f"{prefix}AL", accept_ack="AL")
        answers.append(parse(unframe(sender.send_message(probe))))
    return answers, hl7_message(sample, f"{prefix}0")


def _assert_refused(answers: list[hl7.Message], prefix: str) -> None:
    codes = [(field(a, "MSA", 1), field(a, "MSA", 2)) for a in answers]
    assert codes == [
        ("AE", f"{prefix}0"),
        ("AE", f"{prefix}1"),
        ("AE", f"{prefix}2"),
        ("CE", f"{prefix}ER"),
        ("CE", f"{prefix}AL"),
    ]
    for answer in answers:
        assert "ERR" in [str(s[0]) for s in answer]


def test_sqlite_store_locked_means_ae_never_aa(tmp_path, hl7_samples):
    path = tmp_path / "tie.db"
    config = engine_config(tmp_path, f"sqlite:///{path}", sqlite={"busy_timeout": "200ms"})
    running = RunningEngine(config, {"inbound": inbound()})
    sample = hl7_samples[GHH]
    try:
        with mllp_client(running.port("inbound")) as sender:
            ack = parse(unframe(sender.send_message(hl7_message(sample, "UP-1"))))
        assert field(ack, "MSA", 1) == "AA"
        locker = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            answers, resend = _send_while_down(running.port("inbound"), sample, "DOWN-")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        _assert_refused(answers, "DOWN-")
        with running.store.read() as conn:
            assert list(conn.scalars(select(messages.c.control_id))) == ["UP-1"]
        with mllp_client(running.port("inbound")) as sender:
            ack = parse(unframe(sender.send_message(resend)))
        assert [field(ack, "MSA", 1), field(ack, "MSA", 2)] == ["AA", "DOWN-0"]
        assert [r.raw for r in rows_for(running.store, "DOWN-0")] == [resend]
    finally:
        running.stop()


@pytest.fixture
def dedicated_postgres(postgres_url: str) -> Iterator[tuple[str, str, Any]]:
    """A database of its own (so it can be made unavailable): its name, its URL and an
    admin connection to the server."""
    name = f"tie_down_{uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name, make_url(postgres_url).set(database=name).render_as_string(False), admin
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def test_postgresql_store_unavailable_means_ae_never_aa(tmp_path, dedicated_postgres, hl7_samples):
    name, url, admin = dedicated_postgres
    running = RunningEngine(engine_config(tmp_path, url), {"inbound": inbound()})
    sample = hl7_samples[GHH]
    try:
        with mllp_client(running.port("inbound")) as sender:
            ack = parse(unframe(sender.send_message(hl7_message(sample, "UP-1"))))
        assert field(ack, "MSA", 1) == "AA"
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )

        def sessions_gone() -> bool:  # pg_terminate_backend only signals
            with admin.connect() as conn:
                query = "SELECT count(*) FROM pg_stat_activity WHERE datname = :n"
                return conn.scalar(text(query), {"n": name}) == 0

        wait_until(sessions_gone)
        try:
            answers, resend = _send_while_down(running.port("inbound"), sample, "DOWN-")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        _assert_refused(answers, "DOWN-")
        with mllp_client(running.port("inbound")) as sender:
            ack = parse(unframe(sender.send_message(resend)))
        assert [field(ack, "MSA", 1), field(ack, "MSA", 2)] == ["AA", "DOWN-0"]
        with running.store.read() as conn:
            assert sorted(conn.scalars(select(messages.c.control_id))) == ["DOWN-0", "UP-1"]
    finally:
        running.stop()


# --- the idempotent receiver and MSA-2 keep the sender's bytes ----------------------


def test_undeclared_latin1_control_ids_stay_distinct_and_are_echoed_exactly(tmp_path, store_url):
    running = RunningEngine(
        engine_config(tmp_path, store_url), {"inbound": inbound(idempotent={"window": "1h"})}
    )
    try:
        answers = []
        for control_id in ("ORD-\xe91", "ORD-\xe81"):  # é, è in latin-1, no MSH-18
            message = (
                f"MSH|^~\\&|EPR|RXX|LAB|RXX|20240101||ADT^A01|{control_id}|P|2.5\rPID|1"
            ).encode("latin-1")
            with raw_connection(running.port("inbound")) as sock:
                sock.sendall(START + message + END)
                answers.append(read_frame(sock))
        assert b"MSA|AA|ORD-\xe91" in answers[0]
        assert b"MSA|AA|ORD-\xe81" in answers[1]
        with running.store.read() as conn:
            statuses = conn.execute(select(messages.c.status, messages.c.duplicate_of)).all()
        assert all(dup is None for _, dup in statuses), statuses
    finally:
        running.stop()


def test_senders_that_differ_only_by_a_slash_are_two_senders(tmp_path, store_url):
    running = RunningEngine(
        engine_config(tmp_path, store_url), {"inbound": inbound(idempotent={"window": "1h"})}
    )
    try:
        for app, facility in (("LAB/A", "B"), ("LAB", "A/B")):
            message = f"MSH|^~\\&|{app}|{facility}|R|RF|20240101||ADT^A01|SAME-1|P|2.5\rPID|1"
            with raw_connection(running.port("inbound")) as sock:
                sock.sendall(START + message.encode() + END)
                assert b"MSA|AA|SAME-1" in read_frame(sock)
        rows = rows_for(running.store, "SAME-1")
        assert [r.duplicate_of for r in rows] == [None, None]
    finally:
        running.stop()
