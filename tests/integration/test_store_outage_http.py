"""HTTP while the store cannot be reached (PostgreSQL refusing connections): 503 with
Retry-After on every kind of path, and one warning, not a 500 and a traceback a request."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from console_testing import running_site
from sqlalchemy.exc import OperationalError
from tie_testing import api_token

from router.api.security import SESSION_COOKIE


def _refused(*_args: object, **_kwargs: object) -> contextlib.AbstractContextManager[None]:
    refused = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "Connection refused\n\tIs the server running on that host?"
    )
    raise OperationalError("SELECT 1", {}, refused)


@pytest.fixture
def site_url_and_token(tmp_path, store_url, monkeypatch) -> Iterator[tuple[str, str]]:
    with running_site(tmp_path, store_url, {}) as site:
        token = api_token(site.running.store, "viewer", name="prometheus")
        store = site.running.store
        monkeypatch.setattr(store, "read", _refused)
        monkeypatch.setattr(store, "begin", _refused)
        yield site.url, token


def test_every_request_is_answered_503_with_retry_after_and_logged_once(site_url_and_token, caplog):
    url, token = site_url_and_token
    bearer = {"Authorization": f"Bearer {token}"}
    with caplog.at_level(logging.INFO), httpx.Client(base_url=url, timeout=10) as client:
        answers = {path: client.get(path, headers=bearer) for path in ("/metrics", "/api/channels")}
        client.cookies.set(SESSION_COOKIE, "a-session-it-cannot-look-up")
        answers["/messages"] = client.get("/messages")
        for _ in range(20):  # a scraper every 15 s for 5 minutes
            client.get("/metrics", headers=bearer)
    assert {path: a.status_code for path, a in answers.items()} == dict.fromkeys(answers, 503)
    assert {a.headers["retry-after"] for a in answers.values()} == {"10"}
    assert answers["/api/channels"].json() == {
        "detail": "the store is unavailable; try again shortly"
    }
    assert "The store is unavailable" in answers["/messages"].text
    problems = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.startswith(("router.api", "router.console", "uvicorn", "fastapi"))
    ]
    assert [(r.levelname, r.getMessage(), r.exc_info) for r in problems] == [
        (
            "WARNING",
            "answering HTTP requests 503: store unavailable: OperationalError: connection "
            'failed: connection to server at "127.0.0.1", port 5432 failed: Connection refused',
            None,
        )
    ]
