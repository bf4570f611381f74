"""The MLLP destination: a persistent connection that reconnects, and reads the receiver's ACK."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from typing import cast

from router.config import MllpTarget
from router.connectors import Delivery, SendResult
from router.connectors.mllp.framing import FrameBuffer, FrameTooLarge, TruncatedFrame, frame
from router.connectors.mllp.tls import TlsFileError, client_context
from router.hl7v2.ack import parse_ack
from router.hl7v2.er7 import Er7Error
from router.pipeline import KEY_LENGTH

MAX_ACK = 1024 * 1024


class _AckReader(asyncio.Protocol):
    """One connection to a receiver: writes a frame and answers the next frame it sends back.

    A protocol rather than a stream pair: the ACK is found as its bytes arrive and handed
    straight to the waiting send, with one timer for the whole exchange. Bytes that come
    while nothing waits stay buffered and answer the next send, as a stream would.

    The frame goes out with ``os.write`` on the socket while the transport holds nothing
    unsent (the transport takes what is left): the write does the receiver's side of the
    loopback or TCP send in this thread, and ``os.write`` lets the store's writer thread
    run meanwhile, where uvloop's ``write`` holds the interpreter lock (docs/performance.md,
    eighth round: end to end at eight connections faster in 9 of 11 interleaved pairs).
    """

    def __init__(self) -> None:
        self._frames = FrameBuffer(MAX_ACK)
        self._transport: asyncio.Transport | None = None
        self._fd: int | None = None
        self._waiter: asyncio.Future[bytes | None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        plain = sock is not None and transport.get_extra_info("sslcontext") is None
        self._fd = sock.fileno() if plain else None

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        if self._waiter is not None:
            self._answer()

    def eof_received(self) -> bool:
        self._end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    async def exchange(self, message: bytes, timeout: float) -> bytes | None:
        """Send one frame; its answer, or None when the receiver closed without one."""
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._expire, waiter)
        try:
            self._write(frame(message))
            self._answer()
            return await waiter
        except BaseException:
            self.close()  # a half-read answer or a late one would answer the next send
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _write(self, data: bytes) -> None:
        """Write ``data`` now, releasing the interpreter lock, unless the transport still
        holds earlier bytes (order) or the socket takes only part: the transport sends the
        rest, and meets any error its own way."""
        assert self._transport is not None
        if self._fd is not None and not self._transport.get_write_buffer_size():
            with contextlib.suppress(OSError):  # BlockingIOError: the transport waits
                data = data[os.write(self._fd, data) :]
            if not data:
                return
        self._transport.write(data)

    def _answer(self) -> None:
        try:
            answer = self._frames.next()
        except FrameTooLarge as exc:
            self._settle(exc)
            return
        if answer is not None:
            self._settle(answer)

    def _end(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None:
            self._settle(exc if isinstance(exc, OSError) else OSError(str(exc)))
            return
        self._answer()  # a whole frame may have come with the end
        cut = self._frames.unfinished()
        if cut is not None:
            self._settle(TruncatedFrame(f"connection closed after {cut} bytes of a frame"))
        self._settle(None)

    def _settle(self, outcome: bytes | Exception | None) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if isinstance(outcome, Exception):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)

    @staticmethod
    def _expire(waiter: asyncio.Future[bytes | None]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())


class MllpSender:
    """Sends one delivery at a time on one connection; any doubt closes the connection."""

    def __init__(self, target: MllpTarget) -> None:
        self._target = target
        self._connection: _AckReader | None = None
        self._idle: asyncio.TimerHandle | None = None

    async def send(self, delivery: Delivery) -> SendResult:
        """One delivery; the connection is closed once it has been unused ``idle_timeout``."""
        if self._idle is not None:
            self._idle.cancel()
        try:
            return await self._send(delivery)
        finally:
            if self._connection is not None:
                self._idle = asyncio.get_running_loop().call_later(
                    self._target.idle_timeout, self._close_idle
                )

    def _close_idle(self) -> None:
        """Called only between sends (each send cancels it first)."""
        self._idle = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _send(self, delivery: Delivery) -> SendResult:
        target = self._target
        connection = self._connection
        if connection is None or connection.closed:  # a hang-up while idle is no failure
            try:
                connection = self._connection = await self._connect()
            except TimeoutError:  # nothing was sent: not to be read as "sent, never answered"
                wait = f"{target.connect_timeout:g}s"
                return SendResult(
                    "retry", error=f"could not connect to {target.host}:{target.port} in {wait}"
                )
            except ssl.SSLError as exc:
                reason = _tls_reason(exc)
                return SendResult("retry", error=f"{target.host}:{target.port}: TLS: {reason}")
            except TlsFileError as exc:
                return SendResult("retry", error=f"tls.{exc.key}: {exc}")
            except OSError as exc:
                return SendResult("retry", error=f"{target.host}:{target.port}: {exc}")
        try:
            answer = await connection.exchange(delivery.body.read(), target.ack_timeout)
        except TimeoutError:
            await self.close()
            return SendResult("retry", error=f"no ACK from {target.host}:{target.port} in time")
        except (OSError, FrameTooLarge, TruncatedFrame) as exc:
            await self.close()
            return SendResult("retry", error=f"{target.host}:{target.port}: {exc}")
        if answer is None:
            await self.close()
            return SendResult("retry", error=f"{target.host}:{target.port} closed without an ACK")
        return await self._judge(answer, delivery)

    async def _connect(self) -> _AckReader:
        """A new connection; over TLS, with the certificate files read afresh (a renewed
        client certificate is used from the next connection on)."""
        target, tls = self._target, self._target.tls
        secure: dict[str, object] = {}
        if tls is not None:
            secure = {
                "ssl": client_context(tls),
                "server_hostname": tls.server_name or target.host,
                "ssl_handshake_timeout": target.connect_timeout,
            }
        async with asyncio.timeout(target.connect_timeout):
            _, connection = await asyncio.get_running_loop().create_connection(
                _AckReader, target.host, target.port, **secure
            )
        return connection

    async def _judge(self, answer: bytes, delivery: Delivery) -> SendResult:
        try:
            ack = parse_ack(answer)
        except Er7Error as exc:
            await self.close()
            return SendResult("retry", answer, f"unreadable ACK: {exc}")
        key = delivery.idempotency_key
        if key and ack.control_id[:KEY_LENGTH] != key:  # a key longer than KEY_LENGTH is cut
            await self.close()  # the conversation is out of step: start afresh
            return SendResult(
                "retry",
                answer,
                f"ACK is for {ack.control_id!r}, not {delivery.idempotency_key!r}",
            )
        action = self._target.on_ack.get(ack.code.strip().upper(), "retry")
        if action == "sent":
            return SendResult("sent", answer)
        detail = "; ".join(x for x in (ack.text, ack.error) if x)
        return SendResult(action, answer, f"{ack.code}{': ' + detail if detail else ''}")

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._connection is not None:
            self._connection.close()
        self._connection = None


def _tls_reason(exc: ssl.SSLError) -> str:
    """Why the handshake failed: for a receiver not trusted, OpenSSL's verification message."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"receiver's certificate not accepted: {exc.verify_message}"
    return exc.reason or str(exc)
