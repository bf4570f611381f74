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
from collections.abc import Awaitable, Hashable
from typing import Any, Protocol

from router import metrics
from router.config import ChannelConfig
from router.connectors.hl7_inbound import hl7_inbound
from router.connectors.mllp.connection import MllpConnection, SilentFailure
from router.connectors.mllp.handshakes import HandshakeFailures
from router.connectors.mllp.peer_certificate import client_keys
from router.connectors.mllp.tls import ServerCertificates, TlsFileError
from router.connectors.mllp.tls_server import TlsServer
from router.hl7v2.ack import AckError, ack_code, build_ack, build_reject, should_send
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import MshHeader, parse_header, read_header
from router.repeat_log import RepeatLog
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

    def __init__(self, channel: ChannelConfig, ingest: Ingest) -> None:
        assert channel.source.mllp is not None
        self.channel = channel
        self.options = channel.source.mllp
        self._ingest = ingest
        self._server: asyncio.Server | TlsServer | None = None
        self._connections: set[MllpConnection] = set()
        self._window = channel.idempotent.window if channel.idempotent else None
        self.ack_latency = metrics.ACK_LATENCY.labels(channel.name, "mllp")
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
                    lambda: MllpConnection(self),
                    self.options.host,
                    self.options.port,
                    reuse_address=True,
                )
            else:
                self._server = await TlsServer.start(
                    self.options.host,
                    self.options.port,
                    lambda: MllpConnection(self),
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

    def admit(self, connection: MllpConnection) -> bool:
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

    def forget(self, connection: MllpConnection) -> None:
        """A connection ended: its place is free for another."""
        self._connections.discard(connection)

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
