"""The MLLP destination against a real downstream (python-hl7's MLLP server as the lab).

The lab's answer decides each delivery's fate (DESIGN.md §4); an outage, a silent
lab or a dropped connection only delay delivery, never reorder or lose it (§3.3, §3.4).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import hl7
import pytest
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import (
    Hl7Receiver,
    RunningEngine,
    channel,
    engine_config,
    free_ports,
    hl7_message,
    wait_until,
)

from router.store.schema import attempts, deliveries

OML = "OML_O21_nhs_nwgmsa_v251"
FAST_RETRY = {"max_attempts": 1000, "backoff": ["100ms", "100ms"]}


class Lab(Hl7Receiver):
    """The downstream lab, which also counts connections, can hang up on them all and keeps
    the ACKs it sent. ``answer`` returns an ACK code, a whole ACK (bytes) or None: silence."""

    def __init__(
        self, answer: Callable[[hl7.Message], str | bytes | None] | None = None, port: int = 0
    ):
        self.connections = 0
        self.acks: dict[str, list[bytes]] = {}
        self._writers: dict[Any, Any] = {}
        super().__init__(answer, port)  # type: ignore[arg-type]

    async def _client(self, reader: Any, writer: Any) -> None:
        self.connections += 1
        self._writers[writer] = asyncio.current_task()
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(message)
                reply = self.answer(message)
                if reply is None:
                    continue
                ack = reply if isinstance(reply, bytes) else str(message.create_ack(reply)).encode()
                self.acks.setdefault(control_id(message), []).append(ack)
                writer.writeblock(ack)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.pop(writer, None)
            writer.close()

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    def hang_up(self) -> None:
        """Close every open connection from the lab's side, as a lab's idle timeout would."""

        async def close_all() -> None:
            handlers = list(self._writers.values())
            for writer in list(self._writers):
                writer.close()
            await asyncio.gather(*handlers, return_exceptions=True)

        self._loop.run(close_all())

    def stop(self) -> None:
        self.hang_up()
        super().stop()


def control_id(message: hl7.Message) -> str:
    return str(message.segment("MSH")[10])


def patient(message: hl7.Message) -> str:
    return str(message.segment("PID")[3]).split("^", 1)[0]


@pytest.fixture
def labs() -> Iterator[Callable[..., Lab]]:
    """Start labs (``Lab`` arguments); they stop after the engines, which depend on them."""
    started: list[Lab] = []

    def start(*args: Any, **kwargs: Any) -> Lab:
        lab = Lab(*args, **kwargs)
        started.append(lab)
        return lab

    yield start
    for lab in started:
        lab.stop()


@pytest.fixture
def lab_engine(
    tmp_path: Any, store_url: str, labs: Callable[..., Lab]
) -> Iterator[Callable[..., RunningEngine]]:
    """Start an engine whose channel ``orders`` sends to an MLLP lab; stopped afterwards."""
    started: list[RunningEngine] = []

    def start(port: int, **destination: Any) -> RunningEngine:
        mllp = {"host": "127.0.0.1", "port": port, **destination.pop("mllp", {})}
        orders = channel(
            {
                "name": "orders",
                "source": {"mllp": {"port": 0}},
                "destinations": {"lab": {"mllp": mllp, **destination}},
            }
        )
        running = RunningEngine(engine_config(tmp_path, store_url), {"orders": orders})
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def send(running: RunningEngine, messages: list[bytes]) -> None:
    """Send ``messages`` into the engine on one connection; every one must be accepted."""
    with MLLPClient("127.0.0.1", running.port("orders")) as client:
        client.socket.settimeout(30)
        for raw in messages:
            ack = client.send_message(raw)
            assert b"MSA|CA|" in ack or b"MSA|AA|" in ack, ack


def orders(sample: bytes, *ids: str) -> list[bytes]:
    return [hl7_message(sample, i) for i in ids]


def delivery(running: RunningEngine, key: str) -> Any:
    """The delivery of the message with MSH-10 ``key`` (None until it is planned) and its
    attempts in order."""
    with running.store.read() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.idempotency_key == key)).first()
        if row is None:
            return None, []
        tries = list(
            conn.execute(
                select(attempts).where(attempts.c.delivery_id == row.id).order_by(attempts.c.number)
            )
        )
    return row, tries


def statuses(running: RunningEngine) -> dict[str, str]:
    with running.store.read() as conn:
        rows = conn.execute(select(deliveries.c.idempotency_key, deliveries.c.status))
        return {key: status for key, status in rows}


def msa(ack: bytes) -> tuple[str, str]:
    segment = hl7.parse(ack.decode()).segment("MSA")
    return str(segment[1]), str(segment[2])


# --- what the lab's answer means ----------------------------------------------------


def test_aa_means_sent_and_the_lab_ack_is_kept_with_the_attempt(labs, lab_engine, hl7_samples):
    lab = labs()
    running = lab_engine(lab.port)
    send(running, orders(hl7_samples[OML], "AA-1", "AA-2", "AA-3"))
    wait_until(lambda: statuses(running) == dict.fromkeys(("AA-1", "AA-2", "AA-3"), "sent"))
    assert lab.control_ids() == ["AA-1", "AA-2", "AA-3"]
    for key in ("AA-1", "AA-2", "AA-3"):
        row, tries = delivery(running, key)
        assert row.attempts == 1
        assert [(t.outcome, t.response) for t in tries] == [("sent", lab.acks[key][0])]
        assert msa(tries[0].response) == ("AA", key)


def test_ae_is_retried_until_the_lab_accepts(labs, lab_engine, hl7_samples):
    accepting = False
    lab = labs(lambda _m: "AA" if accepting else "AE")
    running = lab_engine(lab.port, retry=FAST_RETRY)
    send(running, orders(hl7_samples[OML], "AE-1"))

    def retrying_thrice() -> bool:
        row, tries = delivery(running, "AE-1")
        return row is not None and row.status == "retrying" and len(tries) >= 3

    wait_until(retrying_thrice)
    row, tries = delivery(running, "AE-1")
    assert row.attempts == len(tries)
    assert [t.number for t in tries] == list(range(1, len(tries) + 1))
    for attempt in tries:
        assert attempt.outcome == "retrying"
        assert msa(attempt.response) == ("AE", "AE-1")
    accepting = True
    wait_until(lambda: statuses(running) == {"AE-1": "sent"})
    row, tries = delivery(running, "AE-1")
    assert tries[-1].outcome == "sent"
    assert set(lab.control_ids()) == {"AE-1"}  # the same MSH-10 every time
    assert len(lab.received) == len(tries)


def test_ar_fails_at_once_and_the_queue_moves_on(labs, lab_engine, hl7_samples):
    lab = labs(lambda m: "AR" if control_id(m) == "AR-1" else "AA")
    running = lab_engine(lab.port, retry=FAST_RETRY)
    send(running, orders(hl7_samples[OML], "AR-1", "AR-2"))
    wait_until(lambda: statuses(running) == {"AR-1": "failed", "AR-2": "sent"})
    row, tries = delivery(running, "AR-1")
    assert (row.attempts, [t.outcome for t in tries]) == (1, ["failed"])
    assert "AR" in row.last_error
    assert msa(tries[0].response) == ("AR", "AR-1")
    assert lab.control_ids() == ["AR-1", "AR-2"]


def test_on_ack_policy_overrides_only_the_codes_it_names(labs, lab_engine, hl7_samples):
    codes = {"POL-AE": "AE", "POL-AR": "AR"}
    lab = labs(lambda m: codes.get(control_id(m), "AA"))
    running = lab_engine(lab.port, retry=FAST_RETRY, mllp={"on_ack": {"AE": "fail", "AR": "retry"}})
    send(running, orders(hl7_samples[OML], "POL-AA", "POL-AE", "POL-AR"))

    def settled() -> bool:
        _row, tries = delivery(running, "POL-AR")
        return len(tries) >= 2 and statuses(running)["POL-AE"] == "failed"

    wait_until(settled)
    assert statuses(running)["POL-AA"] == "sent"
    row, tries = delivery(running, "POL-AE")
    assert (row.attempts, [t.outcome for t in tries]) == (1, ["failed"])
    row, tries = delivery(running, "POL-AR")
    assert {t.outcome for t in tries} == {"retrying"}


def test_a_silent_lab_times_out_and_is_retried(labs, lab_engine, hl7_samples):
    heard: list[str] = []

    def answer(message: hl7.Message) -> str | None:
        heard.append(control_id(message))
        return None if len(heard) <= 2 else "AA"

    lab = labs(answer)
    running = lab_engine(lab.port, retry=FAST_RETRY, mllp={"ack_timeout": "300ms"})
    send(running, orders(hl7_samples[OML], "QUIET-1"))
    wait_until(lambda: statuses(running) == {"QUIET-1": "sent"})
    _row, tries = delivery(running, "QUIET-1")
    assert [t.outcome for t in tries] == ["retrying"] * (len(tries) - 1) + ["sent"]
    for attempt in tries[:2]:  # at least these two: a stalled machine may add more
        assert attempt.response is None
        assert "no ACK" in attempt.error
    assert heard == ["QUIET-1"] * len(tries)
    assert lab.connections == len(tries)  # a timed-out connection is never reused


def test_a_lab_ack_with_nul_bytes_in_its_text_is_kept_with_the_attempt(
    labs, lab_engine, hl7_samples
):
    """PostgreSQL text cannot hold NUL: recording such an answer must not fail, or the lease
    would run out and the message be sent again and again."""
    heard: list[str] = []

    def answer(message: hl7.Message) -> str | bytes:
        heard.append(control_id(message))
        if len(heard) > 1:
            return "AA"
        return (
            b"MSH|^~\\&|LAB|699X0|EPIC|R0A|20240101120000||ACK^O21^ACK|L1|P|2.5.1\r"
            b"MSA|AE|" + control_id(message).encode() + b"|busy\x00\r"
            b"ERR||||E||||disk\x00full\r"
        )

    lab = labs(answer)
    running = lab_engine(lab.port, retry=FAST_RETRY)
    send(running, orders(hl7_samples[OML], "NUL-1"))
    wait_until(lambda: statuses(running) == {"NUL-1": "sent"})
    _row, tries = delivery(running, "NUL-1")
    assert [t.outcome for t in tries] == ["retrying", "sent"]
    assert tries[0].response == lab.acks["NUL-1"][0]  # byte for byte, NULs included
    assert "busy" in tries[0].error and "full" in tries[0].error
    assert heard == ["NUL-1", "NUL-1"]


# --- outages, connections and order ------------------------------------------------------


def test_messages_queue_through_an_outage_and_arrive_in_order(labs, lab_engine, hl7_samples):
    (port,) = free_ports(1)
    running = lab_engine(port, retry={"max_attempts": 1000, "backoff": ["100ms", "500ms"]})
    ids = [f"OUT-{n:02d}" for n in range(50)]
    send(running, orders(hl7_samples[OML], *ids))

    def refused() -> bool:
        _row, tries = delivery(running, ids[0])
        return bool(tries)

    wait_until(refused)  # the engine has tried, and found nobody listening
    assert set(statuses(running).values()) <= {"queued", "sending", "retrying"}
    lab = labs(port=port)
    wait_until(lambda: statuses(running) == dict.fromkeys(ids, "sent"))
    assert lab.control_ids() == ids


def test_one_connection_is_reused_and_reopened_after_the_lab_hangs_up(
    labs, lab_engine, hl7_samples
):
    lab = labs()
    running = lab_engine(lab.port, retry=FAST_RETRY)
    first = [f"KEEP-{n:02d}" for n in range(20)]
    send(running, orders(hl7_samples[OML], *first))
    wait_until(lambda: statuses(running) == dict.fromkeys(first, "sent"))
    assert lab.connections == 1
    lab.hang_up()
    wait_until(lambda: lab.open_connections == 0)
    second = [f"AGAIN-{n:02d}" for n in range(10)]
    send(running, orders(hl7_samples[OML], *second))
    # One snapshot, naming every delivery: the ACK to ``send`` does not mean its deliveries
    # exist yet (on PostgreSQL the processor plans them afterwards), so "all sent" in one read
    # and "30 of them" in another can both hold before the lab has any of the second batch.
    wait_until(lambda: statuses(running) == dict.fromkeys(first + second, "sent"))
    assert lab.control_ids() == first + second
    assert lab.connections == 2
    with running.store.read() as conn:  # the hang-up was noticed before the next send
        assert set(conn.scalars(select(deliveries.c.attempts))) == {1}


def test_an_idle_connection_is_closed_and_the_next_delivery_opens_a_new_one(
    labs, lab_engine, hl7_samples
):
    """A firewall may drop a silent session without telling either end; the engine closes
    it first, instead of finding it dead only when a message goes unanswered."""
    lab = labs()
    running = lab_engine(lab.port, mllp={"idle_timeout": "300ms"})
    send(running, orders(hl7_samples[OML], "IDLE-1"))
    wait_until(lambda: statuses(running) == {"IDLE-1": "sent"})
    wait_until(lambda: lab.open_connections == 0)  # closed by the engine: the lab never hangs up
    send(running, orders(hl7_samples[OML], "IDLE-2"))
    wait_until(lambda: statuses(running) == {"IDLE-1": "sent", "IDLE-2": "sent"})
    assert lab.connections == 2
    with running.store.read() as conn:  # the close cost no failed attempt
        assert set(conn.scalars(select(deliveries.c.attempts))) == {1}


def test_order_by_patient_lets_other_patients_pass_a_failing_head(labs, lab_engine, hl7_samples):
    refused = {"9000000002"}
    lab = labs(lambda m: "AE" if patient(m) in refused else "AA")
    patients = ["9000000001", "9000000002", "9000000003"]
    running = lab_engine(lab.port, retry=FAST_RETRY, order_by="PID-3.1")
    per_patient = {p: [f"{p}-{n}" for n in range(8)] for p in patients}
    messages = [
        hl7_message(hl7_samples[OML], per_patient[p][n], patient=p)
        for n in range(8)
        for p in patients
    ]
    send(running, messages)

    def received_by(p: str) -> list[str]:
        return [control_id(m) for m in list(lab.received) if patient(m) == p]

    blocked_head, *blocked_rest = per_patient["9000000002"]

    def others_through_and_head_retried() -> bool:
        _row, tries = delivery(running, blocked_head)
        flowing = all(received_by(p) == per_patient[p] for p in patients if p not in refused)
        return flowing and len(tries) >= 3

    wait_until(others_through_and_head_retried)
    assert set(received_by("9000000002")) == {blocked_head}
    current = statuses(running)
    assert current[blocked_head] in ("retrying", "sending")
    for key in blocked_rest:  # waiting: perhaps claimed with their head, never tried
        row, tries = delivery(running, key)
        assert row.status in ("queued", "sending")
        assert tries == []

    refused.clear()
    wait_until(lambda: set(statuses(running).values()) == {"sent"})
    arrived = received_by("9000000002")
    repeats = arrived.count(blocked_head)
    assert arrived == [blocked_head] * repeats + blocked_rest
    for p in patients:
        if p != "9000000002":
            assert received_by(p) == per_patient[p]
