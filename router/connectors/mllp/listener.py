"""The MLLP source: accepts HL7 v2 over TCP and answers only after the store has committed.

The ACK path reads MSH with the fast header parser only (no hl7apy). Broken
input is answered with AR and stored with its reason where it can be; a store
that cannot commit makes the answer AE, never AA (DESIGN.md §3.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from router import metrics
from router.config import ChannelConfig
from router.connectors.hl7_inbound import hl7_inbound
from router.connectors.mllp.framing import FrameTooLarge, TruncatedFrame, frame, read_frame
from router.connectors.mllp.idle import IdleWatch
from router.hl7v2.ack import AckError, ack_code, build_ack, build_reject, should_send
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import MshHeader, parse_header, read_header
from router.store.ingest import Inbound, Receipt, StoreUnavailable

log = logging.getLogger(__name__)
Ingest = Callable[[Inbound], Awaitable[Receipt]]


class MllpListener:
    """One channel's listening socket and its connections."""

    def __init__(self, channel: ChannelConfig, ingest: Ingest) -> None:
        assert channel.source.mllp is not None
        self.channel = channel
        self.options = channel.source.mllp
        self._ingest = ingest
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._window = channel.idempotent.window if channel.idempotent else None
        self._latency = metrics.ACK_LATENCY.labels(channel.name, "mllp")

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle,
            self.options.host,
            self.options.port,
            limit=self.options.max_frame + len(b"\x1c\x0d") + 1,
            reuse_address=True,
        )
        log.info(
            "channel %s listening for MLLP on %s:%d",
            self.channel.name,
            self.options.host,
            self.port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.options.max_connections:
            log.warning("channel %s: too many connections; refusing one", self.channel.name)
            writer.close()
            return
        self._connections.add(task)
        peer = _peer(writer)
        try:
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("channel %s: connection from %s failed", self.channel.name, peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        watch = IdleWatch(self.options.idle_timeout)
        try:
            await self._exchange(reader, writer, peer, watch)
        except asyncio.CancelledError:
            if not watch.expired:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            log.info("channel %s: closing idle connection from %s", self.channel.name, peer)
        finally:
            watch.close()

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
        watch: IdleWatch,
    ) -> None:
        while True:
            watch.waiting()
            try:
                data = await read_frame(reader, self.options.max_frame)
            except FrameTooLarge as exc:
                log.warning("channel %s: %s from %s", self.channel.name, exc, peer)
                writer.write(frame(build_reject(f"{exc}; connection closed")))
                await writer.drain()
                return
            except TruncatedFrame as exc:
                log.warning("channel %s: %s from %s", self.channel.name, exc, peer)
                return
            watch.busy()
            if data is None:
                return
            started = time.perf_counter()
            try:
                answer = await self.accept(data, peer)
            except SilentFailure:
                return
            if answer is not None:
                writer.write(frame(answer))
                await writer.drain()
                self._latency.observe(time.perf_counter() - started)

    async def accept(self, data: bytes, peer: str) -> bytes | None:
        """Commit one message and return the acknowledgement to send (None: send nothing).

        Raises ``SilentFailure`` when the store failed and the sender asked for no
        error acknowledgement (MSH-15 NE or SU): closing is then its only signal.
        """
        source = {"protocol": "mllp", "remote": peer}
        try:
            header = parse_header(data)
        except Er7Error as exc:
            return await self._reject(data, str(exc), source)
        item = hl7_inbound(
            self.channel.name,
            data,
            header,
            source=source,
            ack=build_ack(header, ack_code(header, "accept")),
            idempotency_window=self._window,
        )
        try:
            receipt = await self._ingest(item)
        except StoreUnavailable as exc:
            log.error(
                "channel %s: answering AE for %s: %s", self.channel.name, header.control_id, exc
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

    async def _reject(self, data: bytes, reason: str, source: dict[str, str]) -> bytes | None:
        """AR (CR in enhanced mode), addressed back to the sender when MSH is readable enough."""
        try:
            header: MshHeader | None = read_header(data)
        except Er7Error:
            header = None
        reject = build_reject(reason, header)
        with contextlib.suppress(StoreUnavailable):
            await self._ingest(
                Inbound(
                    self.channel.name,
                    data,
                    source=source,
                    ack=reject,
                    status="error",
                    error=f"rejected: {reason}",
                )
            )
        return reject if header is None or should_send(header, success=False) else None


class SilentFailure(Exception):
    """The store failed and the sender wants no error ACK: the connection is closed instead."""


def _peer(writer: asyncio.StreamWriter) -> str:
    info = writer.get_extra_info("peername")
    return f"{info[0]}:{info[1]}" if isinstance(info, tuple) else str(info)
