"""The store's PostgreSQL connections carry TCP keepalives and a TCP user timeout on their
sockets, so a connection whose network path drops silently fails within a minute instead of
hanging its query for the ~15 minutes of the kernel's retransmissions
(router/store/database.py). Read back from the client socket itself: the server's
``SHOW tcp_keepalives_idle`` reports the server's socket, which libpq's settings do not touch."""

from __future__ import annotations

import os
import socket

from router.store.database import Store

OPTIONS = {
    "SO_KEEPALIVE": (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    "TCP_KEEPIDLE": (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    "TCP_KEEPINTVL": (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    "TCP_KEEPCNT": (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    "TCP_USER_TIMEOUT": (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
}


def _socket_options(url: str) -> dict[str, int]:
    """The TCP options on the socket of a store connection to ``url``."""
    store = Store(url)
    try:
        with store.writer.connect() as conn:
            fd = conn.connection.driver_connection.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as sock:
                return {name: sock.getsockopt(*where) for name, where in OPTIONS.items()}
    finally:
        store.dispose()


def test_a_store_connection_has_keepalives_and_a_user_timeout(postgres_url):
    assert _socket_options(postgres_url) == {
        "SO_KEEPALIVE": 1,
        "TCP_KEEPIDLE": 30,
        "TCP_KEEPINTVL": 10,
        "TCP_KEEPCNT": 3,
        "TCP_USER_TIMEOUT": 60000,
    }


def test_the_urls_own_values_win_on_the_socket(postgres_url):
    joiner = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{joiner}keepalives_idle=7&keepalives_count=2&tcp_user_timeout=9000"
    options = _socket_options(url)
    assert (options["TCP_KEEPIDLE"], options["TCP_KEEPCNT"], options["TCP_USER_TIMEOUT"]) == (
        7,
        2,
        9000,
    )
    assert (options["SO_KEEPALIVE"], options["TCP_KEEPINTVL"]) == (1, 10)
