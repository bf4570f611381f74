"""One MLLP peer's connection: frames scanned as bytes arrive, each answered in turn.

The listener (router.connectors.mllp.listener) owns the socket and decides what each
message is answered with; this is the protocol between it and one peer: framing, flow
control, idle time-outs, and what is logged of a peer's badly framed input.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from router.connectors.mllp.framing import FrameBuffer, FrameTooLarge, frame
from router.connectors.mllp.idle import IdleWatch
from router.connectors.mllp.peer_certificate import tls_source

if TYPE_CHECKING:
    from router.connectors.mllp.listener import MllpListener

# The MLLP source logs under one name, the listener's, whichever module writes the line.
log = logging.getLogger("router.connectors.mllp.listener")


class SilentFailure(Exception):
    """The store failed and the sender wants no error ACK: the connection is closed instead."""


class MllpConnection(asyncio.Protocol):
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
        if not self._listener.admit(self):
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
        self._listener.forget(self)
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
            listener.ack_latency.observe(time.perf_counter() - started)
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


def _kind(lost: str) -> str:
    """``"N bytes of a frame"`` without its number: what a repeat of it is counted with."""
    return lost.split(" ", 1)[1]


def _peer(transport: asyncio.BaseTransport) -> str:
    info = transport.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
