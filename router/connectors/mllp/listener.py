"""The MLLP source: accepts HL7 v2 over TCP and answers only after the store has committed.

The ACK path reads MSH with the fast header parser only (no hl7apy). Broken
input is answered with AR and stored with its reason where it can be; a store
that cannot commit makes the answer AE, never AA (DESIGN.md §3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Hashable
from typing import Any, Protocol, cast

from router import metrics
from router.config import ChannelConfig
from router.connectors.hl7_inbound import hl7_inbound
from router.connectors.mllp.framing import FrameBuffer, FrameTooLarge, frame
from router.connectors.mllp.handshakes import HandshakeFailures
from router.connectors.mllp.idle import IdleWatch
from router.connectors.mllp.peer_certificate import client_keys, tls_source
from router.connectors.mllp.tls import ServerCertificates, TlsFileError
from router.connectors.mllp.tls_server import TlsServer
from router.hl7v2.ack import AckError, ack_code, build_ack, build_reject, should_send
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import MshHeader, parse_header, read_header
from router.payload import Payload
from router.repeat_log import RepeatLog
from router.store.blobs import BlobStore
from router.store.inbound import Inbound, Receipt
from router.store.ingest import StoreUnavailable

log = logging.getLogger(__name__)
HANDSHAKE_TIMEOUT = 60.0  # seconds, or idle_timeout when shorter (asyncio's own default)


class Ingest(Protocol):
    """The writer's ``submit``: ``peer`` is the connection, answered before it sends again."""

    def __call__(self, item: Inbound, *, peer: Hashable | None = None) -> Awaitable[Receipt]: ...


class ListenError(OSError):
    """A channel's port could not be taken (e.g. another program holds it)."""


class MllpListener:
    """One channel's listening socket and its connections."""

    def __init__(
        self, channel: ChannelConfig, ingest: Ingest, blobs: BlobStore | None = None
    ) -> None:
        """``blobs``: where a frame above its threshold is written before it is committed
        (without it, every frame is committed inline)."""
        assert channel.source.mllp is not None
        self.channel = channel
        self.options = channel.source.mllp
        self._ingest = ingest
        self._blobs = blobs
        self._server: asyncio.Server | TlsServer | None = None
        self._connections: set[_Connection] = set()
        self._window = channel.idempotent.window if channel.idempotent else None
        self._latency = metrics.ACK_LATENCY.labels(channel.name, "mllp")
        self.tls: ServerCertificates | None = None
        self.failure: str | None = None  # why the last start failed, for /health
        # A peer's badly framed input, once per host and kind every few minutes.
        self.peer_problems = RepeatLog(log)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        """Listen; a ``tls`` listener reads its certificate files now (and again when they
        change)."""
        try:
            await self._listen()
        except ListenError as exc:
            self.failure = exc.strerror
            raise
        log.info(
            "channel %s listening for MLLP%s on %s:%d",
            self.channel.name,
            " over TLS" if self.tls is not None else "",
            self.options.host,
            self.port,
        )

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        if self.options.tls is not None:
            try:
                self.tls = ServerCertificates(self.options.tls, self.channel.name)
            except TlsFileError as exc:
                raise ListenError(
                    errno.EINVAL, f"channel {self.channel.name}: source.mllp.tls.{exc.key}: {exc}"
                ) from exc
        try:
            if self.tls is None:
                self._server = await loop.create_server(
                    lambda: _Connection(self),
                    self.options.host,
                    self.options.port,
                    reuse_address=True,
                )
            else:
                self._server = await TlsServer.start(
                    self.options.host,
                    self.options.port,
                    lambda: _Connection(self),
                    self.tls.current,
                    min(self.options.idle_timeout, HANDSHAKE_TIMEOUT),
                    HandshakeFailures(self.channel.name, self.peer_problems).report,
                    max_pending=self.options.max_connections,
                )
        except OSError as exc:
            raise ListenError(
                exc.errno,
                f"channel {self.channel.name} cannot listen on "
                f"{self.options.host}:{self.options.port}: "
                + (os.strerror(exc.errno) if exc.errno else str(exc)),
            ) from exc

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            pending = [task for c in list(self._connections) if (task := c.close()) is not None]
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _admit(self, connection: _Connection) -> bool:
        """Count a new connection in, unless there are ``max_connections`` already."""
        if len(self._connections) >= self.options.max_connections:
            self.peer_problems.warning(
                "too many connections",
                "channel %s: too many connections; refusing one",
                self.channel.name,
            )
            return False
        self._connections.add(connection)
        return True

    async def accept(
        self, data: bytes, peer: str, tls: dict[str, str] | None = None
    ) -> bytes | None:
        """Commit one message and return the acknowledgement to send (None: send nothing).
        ``tls``: the connection's TLS metadata (``peer_certificate.tls_source``), stored
        with the message, the verified sender's subject as its ``tls_client`` key too.

        Raises ``SilentFailure`` when the store failed and the sender asked for no
        error acknowledgement (MSH-15 NE or SU): closing is then its only signal.
        """
        try:
            header = parse_header(data)
        except Er7Error as exc:
            readable = _readable(data)
            missing = _missing_field(readable)
            code = "101" if missing else "102"  # required field missing; data type error
            return await self._reject(data, str(exc), peer, readable, code, missing, tls=tls)
        if header.message_code == "ACK":  # never acknowledged: two engines could ping-pong
            await self._store_error(data, peer, header, f"rejected: {_AN_ACK}", None, tls)
            return None
        if _holds_another_msh(data):  # one ACK cannot answer two: neither is taken
            return await self._reject(data, _TWO_MESSAGES, peer, header, "100", "MSH^2", tls=tls)
        item = hl7_inbound(
            self.channel.name,
            data,
            header,
            ack=build_ack(header, ack_code(header, "accept")),
            idempotency_window=self._window,
            source={"protocol": "mllp", "remote": peer},
        )
        if tls is not None:  # plain TCP pays for nothing of it
            item.source = {"protocol": "mllp", "remote": peer, **tls}
            item.keys = client_keys(tls)
        try:
            if self._blobs is not None and len(data) > self._blobs.threshold:
                item.raw = await self._to_blob(data)
            receipt = await self._ingest(item, peer=peer)
        except StoreUnavailable as exc:
            self.peer_problems.error(
                "store unavailable",
                "channel %s: answering AE for %s: %s (the next ones while it lasts are counted)",
                self.channel.name,
                header.control_id,
                exc,
            )
            if not should_send(header, success=False):
                raise SilentFailure(str(exc)) from exc
            return build_ack(
                header,
                ack_code(header, "error"),
                text="message not stored; please resend",
                error=AckError("207", f"{exc}"),
            )
        return receipt.ack if should_send(header, success=True) else None

    async def _to_blob(self, data: bytes) -> Payload:
        """A large frame hashed, written and fsynced in the blob store in a worker thread
        (hashing and writing let the loop run), so that the commit that stores its row is
        as short as any other: inline, 10 MB held up the commit of every other connection's
        messages and, in the processor, read and rewrote the row while holding the GIL."""
        assert self._blobs is not None
        try:
            return await asyncio.to_thread(self._blobs.put, data)
        except OSError as exc:
            raise StoreUnavailable(f"blob store: {exc.strerror or exc}") from exc

    async def refuse(
        self, head: bytes, reason: str, peer: str, tls: dict[str, str] | None = None
    ) -> bytes | None:
        """Reject a frame over ``max_frame`` from its first bytes: addressed back to its
        sender when they hold its whole MSH line, and stored (those bytes only)."""
        first = head.lstrip()
        whole_line = b"\r" in first or b"\n" in first
        header = _readable(head) if whole_line else None  # a cut MSH-10 must not be echoed
        note = f" (only its first {len(head)} bytes are stored)"
        return await self._reject(head, reason, peer, header, note=note, tls=tls)

    async def _reject(
        self,
        data: bytes,
        reason: str,
        peer: str,
        header: MshHeader | None,
        code: str = "102",
        location: str = "",
        *,
        note: str = "",
        tls: dict[str, str] | None = None,
    ) -> bytes | None:
        """AR (CR in enhanced mode), addressed back to the sender when MSH is readable enough,
        and stored as an error with the reason. ``code`` (table 0357) and ``location`` go to
        ERR."""
        reject = build_reject(reason, header, error_code=code, location=location)
        await self._store_error(data, peer, header, f"rejected: {reason}{note}", reject, tls)
        return reject if header is None or should_send(header, success=False) else None

    async def _store_error(
        self,
        data: bytes,
        peer: str,
        header: MshHeader | None,
        error: str,
        ack: bytes | None,
        tls: dict[str, str] | None = None,
    ) -> None:
        """Store input that is not routed as an error with its reason, and with MSH-9, MSH-10
        and the sender when MSH can be read, so that the row is found by them. A store that
        cannot commit loses it: its sender was never told it was accepted."""
        stored = {
            **_sent_by(peer, tls),
            "ack": ack,
            "status": "error",
            "error": error,
        }
        item = (
            Inbound(self.channel.name, data, **stored)
            if header is None
            else hl7_inbound(self.channel.name, data, header, **stored)
        )
        with contextlib.suppress(StoreUnavailable):
            await self._ingest(item, peer=peer)


_AN_ACK = "an acknowledgement (MSH-9 ACK) is neither answered nor routed"
_TWO_MESSAGES = "a second MSH segment: more than one message in one frame"


class SilentFailure(Exception):
    """The store failed and the sender wants no error ACK: the connection is closed instead."""


class _Connection(asyncio.Protocol):
    """One peer's conversation: frames scanned as bytes arrive, one message committed at a time.

    A protocol rather than streams: the stream machinery (a future and a buffer copy per
    read, a drain per write) was a measurable part of the loop's work per message. A
    sender waits for each ACK before sending on, so reading is paused only when bytes
    arrive while a message is being committed or the peer is not reading its ACKs; what
    is held is then at most one read's worth plus a frame under ``max_frame``.
    """

    def __init__(self, listener: MllpListener) -> None:
        self._listener = listener
        self._frames = FrameBuffer(listener.options.max_frame, self._discarded)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._peer = ""
        self._watch: IdleWatch | None = None
        self._task: asyncio.Task[None] | None = None  # the message being committed
        self._paused = False  # reading paused (by us)
        self._blocked = False  # writing paused: the peer's receive window is full
        self._eof = False
        self._tls: dict[str, str] | None = None  # over TLS: what is stored of the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self._listener._admit(self):
            self._transport.close()
            return
        self._peer = _peer(transport)
        if transport.get_extra_info("sslcontext") is not None:
            self._tls = tls_source(transport.get_extra_info("ssl_object"))
        self._watch = IdleWatch(self._listener.options.idle_timeout, self._idle)
        self._watch.waiting()

    def data_received(self, data: bytes) -> None:
        assert self._watch is not None
        self._watch.heard()
        self._frames.feed(data)
        if self._task is not None or self._blocked:
            self._pause()
        else:
            self._next()

    def eof_received(self) -> bool:
        """Answer a message still being committed before closing (a half-closed peer reads).
        TLS has no half-close: its transport closes whatever this returns."""
        self._eof = True
        if self._task is None and not self._blocked:
            self._next()
        return self._tls is None

    def pause_writing(self) -> None:
        self._blocked = True

    def resume_writing(self) -> None:
        self._blocked = False
        if self._task is None:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener._connections.discard(self)
        if self._watch is not None:
            self._watch.close()
        if self._task is not None:
            self._task.cancel()  # the commit goes on; nobody is left to answer

    def close(self) -> asyncio.Task[None] | None:
        """Hang up (the listener stops): the message being committed is abandoned, unanswered."""
        assert self._transport is not None
        self._transport.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    def _pause(self) -> None:
        assert self._transport is not None
        if not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def _next(self) -> None:
        """Start committing the next whole frame held; else read on, or end at the peer's EOF."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        assert self._watch is not None
        channel = self._listener.channel.name
        try:
            data = self._frames.next()
        except FrameTooLarge as exc:
            self._problem("too large", "channel %s: %s from %s", channel, exc, self._peer)
            self._watch.busy()
            self._task = self._loop.create_task(self._refuse(exc))
            return
        if data is not None:
            self._watch.busy()
            self._task = self._loop.create_task(self._answer(data))
        elif self._eof:
            lost = self._unframed()
            if lost:
                self._problem(
                    f"closed with {_kind(lost)}",
                    "channel %s: connection closed after %s from %s",
                    channel,
                    lost,
                    self._peer,
                )
            transport.close()
        elif self._paused:
            self._paused = False
            transport.resume_reading()

    async def _answer(self, data: bytes) -> None:
        """Commit one message, send its answer, and go on with whatever the peer sent next."""
        listener, transport = self._listener, self._transport
        assert transport is not None and self._watch is not None
        started = time.perf_counter()
        try:
            answer = await listener.accept(data, self._peer, self._tls)
        except SilentFailure:
            transport.close()
            return
        except Exception:
            log.exception(
                "channel %s: connection from %s failed", listener.channel.name, self._peer
            )
            transport.close()
            return
        finally:
            self._task = None
        if transport.is_closing():
            return
        if answer is not None:
            transport.write(frame(answer))
            listener._latency.observe(time.perf_counter() - started)
        self._watch.waiting()
        if not self._blocked:
            self._next()

    async def _refuse(self, exc: FrameTooLarge) -> None:
        """Answer a frame over ``max_frame`` and hang up: the rest of it may still be coming."""
        transport = self._transport
        assert transport is not None
        try:
            answer = await self._listener.refuse(
                exc.head, f"{exc}; connection closed", self._peer, self._tls
            )
        except Exception:
            log.exception(
                "channel %s: refusing a frame from %s failed",
                self._listener.channel.name,
                self._peer,
            )
            answer = None
        finally:
            self._task = None
        if answer is not None and not transport.is_closing():
            transport.write(frame(answer))
        transport.close()

    def _discarded(self, size: int, what: str) -> None:
        self._problem(
            f"discarded: {what}",
            "channel %s: discarded %d bytes from %s before a frame (%s)",
            self._listener.channel.name,
            size,
            self._peer,
            what,
        )

    def _problem(self, kind: str, message: str, *args: object) -> None:
        """A warning about this peer's input, counted rather than logged when its host
        caused the same kind within the last few minutes."""
        host = self._peer.rsplit(":", 1)[0]
        self._listener.peer_problems.warning((host, kind), message, *args)

    def _unframed(self) -> str:
        """What is lost when the connection ends now: bytes held that are no whole frame."""
        unfinished = self._frames.unfinished()
        if unfinished is not None:
            return f"{unfinished} bytes of a frame"
        leftover = self._frames.leftover()
        return f"{leftover} bytes outside any frame" if leftover else ""

    def _idle(self) -> None:
        """Hang up on a peer that neither sends nor reads; reset it when ACKs are left unread
        (an orderly close would wait for them to be read first, that is, forever)."""
        transport = self._transport
        assert transport is not None
        channel, lost = self._listener.channel.name, self._unframed()
        if lost:
            self._problem(
                f"idle with {_kind(lost)}",
                "channel %s: closing idle connection from %s, discarding %s",
                channel,
                self._peer,
                lost,
            )
        else:
            log.info("channel %s: closing idle connection from %s", channel, self._peer)
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


def _sent_by(peer: str, tls: dict[str, str] | None) -> dict[str, Any]:
    """A stored error's ``source`` (and a verified TLS sender's key), as ``accept`` makes
    them for a message."""
    if tls is None:
        return {"source": {"protocol": "mllp", "remote": peer}}
    return {"source": {"protocol": "mllp", "remote": peer, **tls}, "keys": client_keys(tls)}


def _readable(data: bytes) -> MshHeader | None:
    """MSH as far as it can address a reject (None: no MSH, or its delimiters are invalid)."""
    try:
        return read_header(data)
    except Er7Error:
        return None


def _holds_another_msh(data: bytes) -> bool:
    """Whether a segment after the first is an MSH: messages sent together in one frame.

    One scan for ``MSH`` past the first; a hit inside a field (a note that says MSH) is
    looked past, so a megabyte body is read once.
    """
    at = data.find(b"MSH", data.find(b"MSH") + 3)
    while at >= 0:
        if data[at - 1] in b"\r\n":
            return True
        at = data.find(b"MSH", at + 3)
    return False


def _missing_field(header: MshHeader | None) -> str:
    """Where the required field is (ERR-2) whose absence ``parse_header`` refused; empty
    when MSH could not be read at all."""
    if header is None:
        return ""
    if not header.message_code:
        return "MSH^1^9"
    if not header.control_id:
        return "MSH^1^10"
    return ""


def _kind(lost: str) -> str:
    """``"N bytes of a frame"`` without its number: what a repeat of it is counted with."""
    return lost.split(" ", 1)[1]


def _peer(transport: asyncio.BaseTransport) -> str:
    info = transport.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
