"""The MLLP sender against receivers that misbehave in ways a real lab's software cannot be
asked to: answers cut off, split into bytes, too large, never sent, or a hang-up while idle.

Each test runs on asyncio's own loop (the in-process engines of the other tests) and on
uvloop (what ``run.py serve`` installs), whose transports differ.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
import uvloop

from router.config import MllpTarget
from router.connectors import Delivery
from router.connectors.mllp.sender import MAX_ACK, MllpSender
from router.pipeline import KEY_LENGTH

START, END = b"\x0b", b"\x1c\x0d"
Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def order(control_id: str) -> bytes:
    return (
        f"MSH|^~\\&|TIE|TRUST|LAB|LAB|20261130090000||OML^O21^OML_O21|{control_id}|P|2.5.1\r"
        "PID|1||9990001234^^^NHS^NH||DOE^JANE\r"
    ).encode()


def ack(control_id: str, code: str = "AA") -> bytes:
    return (
        START
        + (
            "MSH|^~\\&|LAB|LAB|TIE|TRUST|20261130090001||ACK^O21^ACK|A1|P|2.5.1\r"
            f"MSA|{code}|{control_id}\r"
        ).encode()
        + END
    )


def delivery(control_id: str) -> Delivery:
    hl7 = "x-application/hl7-v2+er7"
    return Delivery(1, 1, "u1", "orders", "lab", order(control_id), hl7, "", control_id, 0)


class Receiver:
    """A raw MLLP receiver whose every answer is scripted by ``reply``."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.received: list[bytes] = []

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                data = await reader.readuntil(END)
                self.received.append(data)
                await self.reply(data, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self, limit: int = 4 * MAX_ACK) -> int:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0, limit=limit)
        self._server = server
        return server.sockets[0].getsockname()[1]


def control_id_of(frame: bytes) -> str:
    return frame.split(b"\r", 1)[0].split(b"|")[9].decode()


async def answer_aa(data: bytes, writer: asyncio.StreamWriter) -> None:
    writer.write(ack(control_id_of(data)))


async def sends_again_on_a_new_connection(sender: MllpSender, receiver: Receiver) -> None:
    """After a failed exchange: the receiver now answers, and the sender's next send goes
    on a connection of its own."""
    receiver.reply = answer_aa
    assert (await sender.send(delivery("M2"))).outcome == "sent"
    await sender.close()
    assert receiver.connections == 2


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def run(coro: Awaitable[None]) -> None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]

    return run


async def sender_for(receiver: Receiver, **target: float) -> MllpSender:
    port = await receiver.start()
    return MllpSender(MllpTarget(host="127.0.0.1", port=port, **target))


def test_a_frame_larger_than_the_socket_takes_at_once_arrives_whole_and_in_order(run):
    """The sender writes what the socket takes at once (a few MB on loopback) and leaves the
    rest to the transport: nothing may be lost, doubled or reordered across the two."""
    big = [order(f"BIG{i}") + b"OBX|1|TX|||" + bytes([65 + i]) * 12_000_000 for i in range(2)]

    async def scenario() -> None:
        receiver = Receiver(answer_aa)
        port = await receiver.start(limit=32_000_000)
        sender = MllpSender(MllpTarget(host="127.0.0.1", port=port))
        for i, payload in enumerate(big):
            sent = await sender.send(replace(delivery(f"BIG{i}"), payload=payload))
            assert sent.outcome == "sent"
        await sender.close()
        assert receiver.received == [START + payload + END for payload in big]

    run(scenario())


def test_acks_on_one_connection_each_answer_its_own_message(run):
    async def scenario() -> None:
        receiver = Receiver(answer_aa)
        sender = await sender_for(receiver)
        results = [await sender.send(delivery(f"M{i}")) for i in range(3)]
        await sender.close()
        assert [r.outcome for r in results] == ["sent"] * 3
        assert [(r.response or b"").split(b"\r")[1] for r in results] == [
            b"MSA|AA|M0",
            b"MSA|AA|M1",
            b"MSA|AA|M2",
        ]
        assert receiver.connections == 1

    run(scenario())


def test_an_ack_that_arrives_a_byte_at_a_time_is_read_whole(run):
    async def trickle(data: bytes, writer: asyncio.StreamWriter) -> None:
        for byte in ack(control_id_of(data)):
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)

    async def scenario() -> None:
        sender = await sender_for(Receiver(trickle))
        result = await sender.send(delivery("M1"))
        await sender.close()
        assert result.outcome == "sent", result

    run(scenario())


def test_an_ack_cut_off_by_a_hang_up_is_retried_with_its_reason(run):
    async def cut(data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(ack(control_id_of(data))[:20])
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        sender = await sender_for(Receiver(cut))
        result = await sender.send(delivery("M1"))
        assert result.outcome == "retry"
        assert "connection closed after 19 bytes of a frame" in (result.error or "")

    run(scenario())


def test_a_hang_up_without_an_answer_is_retried(run):
    async def hang_up(data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def scenario() -> None:
        sender = await sender_for(Receiver(hang_up))
        result = await sender.send(delivery("M1"))
        assert result.outcome == "retry"
        assert "closed without an ACK" in (result.error or "")

    run(scenario())


def test_an_answer_larger_than_the_limit_is_refused_and_the_connection_closed(run):
    async def flood(data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(START + b"x" * (MAX_ACK + 10) + END)
        await writer.drain()

    async def scenario() -> None:
        receiver = Receiver(flood)
        sender = await sender_for(receiver)
        result = await sender.send(delivery("M1"))
        assert result.outcome == "retry"
        assert f"larger than {MAX_ACK}" in (result.error or "")
        await sends_again_on_a_new_connection(sender, receiver)

    run(scenario())


def test_silence_times_out_and_the_next_send_starts_a_new_connection(run):
    async def silent(data: bytes, writer: asyncio.StreamWriter) -> None:
        return None

    async def scenario() -> None:
        receiver = Receiver(silent)
        sender = await sender_for(receiver, ack_timeout=0.2)
        result = await sender.send(delivery("M1"))
        assert result.outcome == "retry"
        assert "in time" in (result.error or "")
        await sends_again_on_a_new_connection(sender, receiver)

    run(scenario())


def test_an_ack_for_another_message_is_retried_on_a_new_connection(run):
    async def stale(data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(ack("SOMETHING-ELSE"))

    async def scenario() -> None:
        receiver = Receiver(stale)
        sender = await sender_for(receiver)
        result = await sender.send(delivery("M1"))
        assert result.outcome == "retry"
        assert result.error == "ACK is for 'SOMETHING-ELSE', not 'M1'"
        await sends_again_on_a_new_connection(sender, receiver)

    run(scenario())


def test_a_hang_up_while_idle_is_no_failure(run):
    async def answer_then_hang_up(data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(ack(control_id_of(data)))
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        receiver = Receiver(answer_then_hang_up)
        sender = await sender_for(receiver)
        assert (await sender.send(delivery("M1"))).outcome == "sent"
        while not sender._connection.closed:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)  # until the sender's loop has seen the hang-up
        assert (await sender.send(delivery("M2"))).outcome == "sent"
        await sender.close()
        assert receiver.connections == 2

    run(scenario())


def test_an_ack_code_in_lower_case_or_padded_is_read_as_its_code(run):
    async def casual(data: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(ack(control_id_of(data), " aa "))

    async def scenario() -> None:
        sender = await sender_for(Receiver(casual))
        assert (await sender.send(delivery("M1"))).outcome == "sent"
        await sender.close()

    run(scenario())


def test_a_control_id_longer_than_the_stored_key_is_matched_by_its_stored_part(run):
    long_id = "L" + "X" * 299
    cut = replace(delivery(long_id), idempotency_key=long_id[:KEY_LENGTH])

    async def scenario() -> None:
        sender = await sender_for(Receiver(answer_aa))
        assert (await sender.send(cut)).outcome == "sent"
        await sender.close()

    run(scenario())


def test_a_connection_that_cannot_be_made_in_time_says_so_not_no_ack(run):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # never accepted: once its queue is full, connects hang
    port = listener.getsockname()[1]
    waiting = [socket.socket() for _ in range(3)]
    for s in waiting:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))  # fills the queue; the later ones wait in SYN_SENT

    async def scenario() -> None:
        sender = MllpSender(MllpTarget(host="127.0.0.1", port=port, connect_timeout=0.3))
        result = await sender.send(delivery("M1"))
        assert (result.outcome, result.error) == (
            "retry",
            f"could not connect to 127.0.0.1:{port} in 0.3s",
        )

    try:
        run(scenario())
    finally:
        for s in (*waiting, listener):
            s.close()
