"""Lingering close for the HTTP server, as Apache and nginx do it.

A request refused before its body is read (413 from its Content-Length, router/api/limits.py
and the gateway's ``max_body``) is answered at once with ``Connection: close``. uvicorn
then closes the socket with the client's body still arriving; the kernel answers unread
data with a reset, which can reach the client before it has read the 413, so the client
sees a broken connection instead of the answer. Here the server instead shuts down its
write side once the answer is flushed (the client reads the answer, then end of stream),
discards what the client still sends, and closes when the client closes, or after
``LINGER_SECONDS`` or ``LINGER_BYTES``, whichever comes first: a client that never stops
cannot hold the connection or memory for longer than that. A connection closed after a
body that was read whole closes at once, as before.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

LINGER_SECONDS = 5.0
LINGER_BYTES = 16 * 1024 * 1024


class _ClosingGracefully:
    """The connection's transport, whose ``close`` lingers while a request body is unread."""

    def __init__(self, transport: asyncio.Transport, protocol: LingeringHTTPProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_gracefully()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()


class LingeringHTTPProtocol(AutoHTTPProtocol):
    """uvicorn's HTTP protocol, closing with a linger when the request body is unread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingering = False
        self._socket: asyncio.Transport | None = None
        self._discarded = 0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._socket = transport
        super().connection_made(_ClosingGracefully(transport, self))

    def close_gracefully(self) -> None:
        transport = self._socket
        assert transport is not None
        if self.lingering or transport.is_closing():
            return
        if not self._body_unread() or not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()  # after what is buffered: the answer goes out whole first
        except OSError:  # the client has gone already (reset): nothing to wait for
            transport.abort()
            return
        self.lingering = True
        transport.resume_reading()  # flow control may have paused it for a large body
        self._deadline = self.loop.call_later(LINGER_SECONDS, transport.close)

    def _body_unread(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.more_body

    def data_received(self, data: bytes) -> None:
        if not self.lingering:
            super().data_received(data)
            return
        self._discarded += len(data)
        if self._discarded > LINGER_BYTES and self._socket is not None:
            self._socket.close()

    def eof_received(self) -> bool | None:
        if self.lingering:
            return False  # the client is done too: asyncio closes the transport
        return super().eof_received()

    def shutdown(self) -> None:
        """The server is stopping: a lingering connection closes now, not at its deadline."""
        if self.lingering and self._socket is not None:
            self._socket.close()
            return
        super().shutdown()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)
