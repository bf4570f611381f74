"""A listening socket that takes each connection's TLS handshake itself, to see its outcome.

``loop.create_server(ssl=...)`` drops a failed handshake silently (asyncio and uvloop
log it only in debug mode), and upgrading each accepted connection with ``start_tls``
races uvloop, which starts reading after ``connection_made`` whatever the protocol
paused: the ClientHello could be read as MLLP. Here each accepted socket goes through
``loop.connect_accepted_socket(ssl=...)``, which returns once the handshake is done (the
protocol is then made, as by any server) or raises why it failed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger(__name__)
BACKLOG = 100  # asyncio's create_server default


class TlsServer:
    """What the listener uses of ``asyncio.Server``: ``sockets``, ``is_serving``, ``close``
    and ``wait_closed``."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[], asyncio.Protocol],
        context: Callable[[], ssl.SSLContext],
        handshake_timeout: float,
        failed: Callable[[str, BaseException], None],
        max_pending: int,
    ) -> None:
        self.sockets = sockets
        self._max_pending = max_pending
        self._factory = factory
        self._context = context
        self._timeout = handshake_timeout
        self._failed = failed
        self._loop = asyncio.get_running_loop()
        self._accepting = [self._loop.create_task(self._accept(s)) for s in sockets]
        self._handshakes: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(
        cls,
        host: str,
        port: int,
        factory: Callable[[], asyncio.Protocol],
        context: Callable[[], ssl.SSLContext],
        handshake_timeout: float,
        failed: Callable[[str, BaseException], None],
        max_pending: int,
    ) -> TlsServer:
        """Bind every address ``host`` names, as ``create_server`` does (OSError if one
        cannot be taken), and start accepting; ``context()`` is asked for each connection.
        Beyond ``max_pending`` handshakes under way, a new connection is closed at once."""
        sockets = await _bind(host, port)
        return cls(sockets, factory, context, handshake_timeout, failed, max_pending)

    def is_serving(self) -> bool:
        return any(not task.done() for task in self._accepting)

    def close(self) -> None:
        """Stop accepting and abandon the handshakes under way; connections made stay
        open (the listener closes them)."""
        for task in [*self._accepting, *self._handshakes]:
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._handshakes, return_exceptions=True)

    async def _accept(self, listening: socket.socket) -> None:
        while True:
            try:
                sock, _ = await self._loop.sock_accept(listening)
            except OSError as exc:  # e.g. out of file descriptors: try again shortly
                log.error("accepting a connection on %s failed: %s", _name(listening), exc)
                await asyncio.sleep(1.0)
                continue
            if len(self._handshakes) >= self._max_pending:  # peers that connect, say nothing
                log.warning("%d TLS handshakes under way; refusing one", len(self._handshakes))
                sock.close()
                continue
            task = self._loop.create_task(self._handshake(sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, sock: socket.socket) -> None:
        try:
            peer = _name(sock, remote=True)
        except OSError:  # gone already
            sock.close()
            return
        context = self._context()
        try:
            # Our own limit, so that running out of time is a TimeoutError (the loop's own
            # is a ConnectionAbortedError, as a peer's hang-up is); the loop's never comes.
            async with asyncio.timeout(self._timeout):
                await self._loop.connect_accepted_socket(
                    self._factory,
                    sock,
                    ssl=context,
                    ssl_handshake_timeout=self._timeout + 5,
                )
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as exc:  # each failure is reported, never raised to the loop
            sock.close()
            self._failed(peer, exc)


async def _bind(host: str, port: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    found = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _name(sock: socket.socket, *, remote: bool = False) -> str:
    address = sock.getpeername() if remote else sock.getsockname()
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
