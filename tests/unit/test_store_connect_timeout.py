"""A PostgreSQL store whose server accepts the connection and never answers: the store
call fails after libpq's connect_timeout, instead of waiting for ever; and every connection
gets TCP keepalives and a TCP user timeout unless the URL sets its own
(router/store/database.py)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from router.store import database
from router.store.database import Store


def test_a_silent_server_fails_the_call_after_the_connect_timeout(monkeypatch):
    monkeypatch.setattr(database, "CONNECT_TIMEOUT", 1)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), says nothing
        port = silent.getsockname()[1]
        # Without a timeout the call would wait for ever: hang up after 8 s to end it.
        hang_up = threading.Timer(8, lambda: silent.accept()[0].close())
        hang_up.start()
        store = Store(f"postgresql+psycopg://root@127.0.0.1:{port}/tie")
        started = time.monotonic()
        with pytest.raises(OperationalError), store.read() as conn:
            conn.execute(text("SELECT 1"))
        waited = time.monotonic() - started
        hang_up.cancel()
        store.dispose()
    assert waited < 5


def test_every_connection_gets_the_timeouts_and_keepalives():
    assert database._connect_args("postgresql+psycopg://h/db") == {
        "connect_timeout": 10,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 60000,
    }


@pytest.mark.parametrize(
    "name",
    [
        "connect_timeout",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
    ],
)
def test_a_value_in_the_url_wins(name):
    """connect_args would override the URL's own value: it is left out of them instead."""
    args = database._connect_args(f"postgresql+psycopg://h/db?{name}=7&sslmode=require")
    assert name not in args and len(args) == 5
