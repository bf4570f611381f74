"""What the console's timeout warning is told by the server (static/session-timeout.js):
how long its session has left, when to warn, and "Stay signed in" (/session/keep-alive)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from console_testing import Site, csrf_of, running_site, sign_in
from sqlalchemy import select, update

from router.store.inbound import utcnow
from router.store.schema import sessions

USERS = {"vic": ["viewer"]}


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    auth = {"session_idle": "10m", "session_lifetime": "1h", "session_warning": "2m"}
    with running_site(tmp_path, store_url, USERS, auth=auth) as running:
        yield running


def _clock(page: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r'data-(idle-left|life-left|warn-\w+)="(\d+)"', page)}


def _seen_ago(site: Site, ago: timedelta) -> None:
    with site.running.store.begin() as conn:
        conn.execute(update(sessions).values(last_seen_at=utcnow() - ago))


def test_a_console_page_says_when_its_session_ends_and_when_to_warn(site):
    client = sign_in(site.url, "vic")
    answer = client.get("/")
    clock = _clock(answer.text)
    assert 590 <= clock["idle-left"] <= 600
    assert 3590 <= clock["life-left"] <= 3600
    assert (clock["warn-idle"], clock["warn-life"]) == (120, 120)
    assert answer.headers["X-Session-Idle-Left"] == str(clock["idle-left"])
    login = httpx.get(f"{site.url}/login")
    assert _clock(login.text) == {}, "no session, no clock"
    assert 'id="session-idle"' not in login.text


def test_a_background_refresh_is_told_the_idle_time_left_unchanged(site):
    client = sign_in(site.url, "vic")
    _seen_ago(site, timedelta(minutes=5))
    answer = client.get("/", headers={"X-Background-Refresh": "true"})
    assert 290 <= int(answer.headers["X-Session-Idle-Left"]) <= 300


def test_stay_signed_in_is_activity_now_and_needs_the_csrf_token(site):
    client = sign_in(site.url, "vic")
    csrf = csrf_of(client.get("/").text)
    _seen_ago(site, timedelta(seconds=30))  # too recent for a page's request to note again

    assert client.post("/session/keep-alive").status_code == 403, "no CSRF token"
    answer = client.post("/session/keep-alive", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 200
    assert answer.json()["idle-left"] == 600
    with site.running.store.read() as conn:
        seen = conn.scalar(select(sessions.c.last_seen_at))
    assert utcnow() - seen < timedelta(seconds=10)

    anonymous = httpx.post(f"{site.url}/session/keep-alive", headers={"X-CSRF-Token": csrf})
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/login")


def test_a_short_idle_limit_is_warned_of_halfway(tmp_path, store_url):
    with running_site(tmp_path, store_url, USERS, auth={"session_idle": "1m"}) as short:
        clock = _clock(sign_in(short.url, "vic").get("/").text)
    assert clock["warn-idle"] == 30, "2 minutes' warning of a 1-minute limit would come at once"
    assert clock["warn-life"] == 120
