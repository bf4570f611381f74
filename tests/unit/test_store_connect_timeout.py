"""A PostgreSQL store whose server accepts the connection and never answers: the store
call fails after libpq's connect_timeout, instead of waiting for ever (router/store/database.py)."""

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


def test_a_connect_timeout_in_the_url_is_kept():
    assert database._connect_timeout("postgresql+psycopg://h/db?connect_timeout=3") == {}
    assert database._connect_timeout("postgresql+psycopg://h/db") == {"connect_timeout": 10}
