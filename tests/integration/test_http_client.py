"""RawClient, the synchronous hop's HTTP client, against peers on real local sockets: what it
sends, what it passes back, and how each way of failing is told to its caller."""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest
import uvloop
from tie_testing import Certificates, free_ports, make_certificates

from router.config.http import TlsOptions
from router.connectors import http_client
from router.connectors.http_client import Broken, ConnectFailed, RawClient, TimedOut, TooLarge
from router.fhir.forwarding import Forwarder, HopFailed

GUARD = 30.0  # a hang fails the test instead of stalling the run
SHORT = 0.2  # the timeouts that are meant to pass
Answer = Callable[[asyncio.StreamWriter], Awaitable[bool]]  # True: keep the connection


def run(coro: Awaitable[None]) -> None:
    uvloop.run(asyncio.wait_for(coro, GUARD))


def answer(head: bytes, body: bytes = b"") -> Answer:
    async def write(writer: asyncio.StreamWriter) -> bool:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True

    return write


async def hang_up(writer: asyncio.StreamWriter) -> bool:
    return False


class Peer:
    """An HTTP/1.1 server on a real socket: it records each request, then ``answer`` is
    written (``None``: no answer ever). ``reads=False``: it never reads at all."""

    def __init__(self, answer: Answer | None, *, reads: bool = True, tls=None) -> None:
        self.answer, self.reads, self.tls = answer, reads, tls
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []
        self.connections = 0
        self._received = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> Peer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str = "/fhir") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def received(self, count: int) -> None:
        async with self._received:
            await self._received.wait_for(lambda: len(self.requests) >= count)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        try:
            if not self.reads:
                await asyncio.Event().wait()
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in head[1:])]
                headers = [(k, v) for k, v in headers if k]
                size = sum(int(v) for k, v in headers if k.lower() == "content-length")
                self.requests.append((head[0], headers, await reader.readexactly(size)))
                async with self._received:
                    self._received.notify_all()
                if self.answer is None:
                    await asyncio.Event().wait()
                if not await self.answer(writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()


def test_the_answer_comes_back_as_it_was_sent_on_one_kept_alive_connection():
    zipped = gzip.compress(b'{"resourceType": "Bundle"}')
    head = (
        b"HTTP/1.1 201 Made It\r\nContent-Type: application/fhir+json\r\n"
        b"Content-Encoding: gzip\r\nSet-Cookie: session=1\r\nX-A: 1\r\nx-a: 2\r\n"
    )
    sent = [("Content-Type", "application/fhir+json"), ("X-Dup", "1"), ("x-dup", "2")]

    async def main() -> None:
        async with Peer(answer(head, zipped)) as peer:
            client = RawClient(TlsOptions(), GUARD, GUARD)
            try:
                first = await client.request("POST", peer.url("/fhir/a%2Fb?x=%20y"), sent, b"{}")
                await client.request("GET", peer.url("/fhir/Slot?q=a+b"), [], b"")
            finally:
                await client.close()
            assert (first.status, first.reason, first.body) == (201, "Made It", zipped)
            assert first.headers == [
                ("Content-Type", "application/fhir+json"),
                ("Content-Encoding", "gzip"),
                ("Set-Cookie", "session=1"),
                ("X-A", "1"),
                ("x-a", "2"),
                ("Content-Length", str(len(zipped))),
            ]
            (line, headers, body), (again, headers_again, _) = peer.requests
            assert (line, body) == ("POST /fhir/a%2Fb?x=%20y HTTP/1.1", b"{}")
            names = [k.lower() for k, _ in headers]
            assert sorted(set(names)) == ["content-length", "content-type", "host", "x-dup"]
            assert [v for k, v in headers if k.lower() == "x-dup"] == ["1", "2"]
            # Nothing of the client's own: no cookie kept, no user agent, no encodings asked.
            assert again == "GET /fhir/Slot?q=a+b HTTP/1.1"
            assert [k.lower() for k, _ in headers_again] == ["host"]
            assert peer.connections == 1

    run(main())


def test_a_refused_connection_is_connect_failed():
    """The reason names the address and why, and no TLS setting for a plain-HTTP receiver:
    aiohttp's own text ("... ssl:default [...]") had support looking at certificates."""
    (port,) = free_ports(1)

    async def main() -> None:
        client = RawClient(TlsOptions(), GUARD, GUARD)
        try:
            with pytest.raises(ConnectFailed, match="ConnectError") as refused:
                await client.request("POST", f"http://127.0.0.1:{port}/fhir", [], b"{}")
            reason = str(refused.value)
            assert reason.startswith(f"ConnectError: cannot connect to 127.0.0.1:{port}: ")
            assert "ssl" not in reason.lower()
        finally:
            await client.close()

    run(main())


def test_no_pooled_connection_free_in_time_is_connect_failed():
    async def main() -> None:
        async with Peer(None) as peer:
            client = RawClient(TlsOptions(), GUARD, SHORT)
            busy = [
                asyncio.create_task(client.request("POST", peer.url(), [], b"{}"))
                for _ in range(http_client.MAX_CONNECTIONS)
            ]
            try:
                await peer.received(http_client.MAX_CONNECTIONS)
                with pytest.raises(ConnectFailed, match="ConnectTimeout"):
                    await client.request("POST", peer.url(), [], b"{}")
                assert len(peer.requests) == http_client.MAX_CONNECTIONS
            finally:
                for task in busy:
                    task.cancel()
                await asyncio.gather(*busy, return_exceptions=True)
                await client.close()

    run(main())


def test_an_answer_not_given_in_time_is_timed_out_and_not_sent_again():
    async def main() -> None:
        async with Peer(None) as peer:
            client = RawClient(TlsOptions(), SHORT, GUARD)
            try:
                with pytest.raises(TimedOut):
                    await client.request("PUT", peer.url(), [], b"{}")
            finally:
                await client.close()
            assert len(peer.requests) == 1

    run(main())


def test_a_request_the_receiver_does_not_read_is_timed_out():
    """Writing is bounded too: the body is far more than the sockets' buffers hold."""

    async def main() -> None:
        async with Peer(None, reads=False) as peer:
            client = RawClient(TlsOptions(), SHORT, GUARD)
            try:
                with pytest.raises(TimedOut):
                    await client.request("POST", peer.url(), [], b"x" * (64 * 1024 * 1024))
            finally:
                await client.close()

    run(main())


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_connection_closed_without_an_answer_is_broken_and_not_sent_again(method):
    """Not even an idempotent request on a kept-alive connection (aiohttp's own habit)."""
    answers = iter([answer(b"HTTP/1.1 200 OK\r\n"), hang_up, hang_up])

    async def next_answer(writer: asyncio.StreamWriter) -> bool:
        return await next(answers)(writer)

    async def main() -> None:
        async with Peer(next_answer) as peer:
            client = RawClient(TlsOptions(), GUARD, GUARD)
            try:
                await client.request(method, peer.url(), [], b"{}")
                with pytest.raises(Broken, match="ServerDisconnectedError"):
                    await client.request(method, peer.url(), [], b"{}")
            finally:
                await client.close()
            assert len(peer.requests) == 2

    run(main())


def test_a_malformed_answer_is_broken():
    async def garbage(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"not http at all\r\n\r\n")
        await writer.drain()
        return False

    async def main() -> None:
        async with Peer(garbage) as peer:
            client = RawClient(TlsOptions(), GUARD, GUARD)
            try:
                with pytest.raises(Broken):
                    await client.request("POST", peer.url(), [], b"{}")
            finally:
                await client.close()

    run(main())


def test_an_answer_past_the_limit_is_too_large_and_its_connection_not_reused():
    """Far more than the client buffers before it stops reading: the answer is cut off."""
    big = b"x" * (4 * 1024 * 1024)

    async def main() -> None:
        async with Peer(answer(b"HTTP/1.1 200 OK\r\n", big)) as peer:
            client = RawClient(TlsOptions(), GUARD, GUARD)
            try:
                with pytest.raises(TooLarge):
                    await client.request("POST", peer.url(), [], b"{}", limit=1000)
                whole = await client.request("POST", peer.url(), [], b"{}", limit=len(big))
            finally:
                await client.close()
            assert whole.body == big
            assert peer.connections == 2

    run(main())


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("hop-tls"))


def test_tls_verifies_the_receiver_and_presents_the_client_certificate(certificates):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=certificates.ca)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    ours = TlsOptions(
        ca=certificates.ca, cert=certificates.client_cert, key=certificates.client_key
    )

    async def main() -> None:
        async with Peer(answer(b"HTTP/1.1 200 OK\r\n", b"{}"), tls=context) as peer:
            client, stranger = RawClient(ours, GUARD, GUARD), RawClient(TlsOptions(), GUARD, GUARD)
            try:
                assert (await client.request("POST", peer.url(), [], b"{}")).body == b"{}"
                # The public CAs (certifi) do not vouch for the test CA's certificate, and
                # the reason says so (not a bare ConnectError).
                with pytest.raises(ConnectFailed, match="certificate verify failed"):
                    await stranger.request("POST", peer.url(), [], b"{}")
            finally:
                await client.close()
                await stranger.close()
            assert len(peer.requests) == 1

    run(main())


def test_a_certificate_that_cannot_be_verified_is_not_tried_again(certificates):
    """``connect_retries`` tries a connection that could not be made again, but a receiver
    whose certificate fails verification would fail the same way at once."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    accepted = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: accepted.append(1) or asyncio.Protocol(), "127.0.0.1", 0, ssl=context
        )
        port = server.sockets[0].getsockname()[1]
        options = SimpleNamespace(tls=TlsOptions(), timeout=GUARD, connect_timeout=GUARD)
        forwarder = Forwarder()
        try:
            failed = await forwarder.send(
                "c",
                options,
                "POST",
                f"https://127.0.0.1:{port}/fhir",
                [],
                b"{}",
                peer="the receiver",
                limit=1024,
                connect_retries=3,
            )
        finally:
            await forwarder.close()
            server.close()
        assert isinstance(failed, HopFailed)
        assert "certificate verify failed" in failed.text
        assert len(accepted) == 1

    run(main())


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_tls_receiver_hanging_up_says_a_client_certificate_may_be_wanted(certificates, how):
    """Under TLS 1.3 a receiver that requires a client certificate refuses a client without
    one only after the handshake, and the client sees it at its first read as a close or,
    as often, a reset: either way the reason says that a certificate may be wanted."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    trusting = TlsOptions(ca=certificates.ca)

    async def hang_up_by(writer: asyncio.StreamWriter) -> bool:
        if how == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False

    async def main() -> None:
        async with Peer(hang_up_by, tls=context) as peer:
            client = RawClient(trusting, GUARD, GUARD)
            try:
                with pytest.raises(Broken, match="it may require a client certificate"):
                    await client.request("POST", peer.url(), [], b"{}")
            finally:
                await client.close()
            assert len(peer.requests) == 1

    run(main())
