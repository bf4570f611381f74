"""Users, tokens and sessions over HTTP: argon2 at rest, revocation, disabling, expiry, CSRF,
the login throttle, and an audit event for every user action."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from console_testing import PASSWORD, Site, csrf_of, running_site, sign_in
from sqlalchemy import select, update
from tie_testing import api_token

from router.api.security import SESSION_COOKIE
from router.auth.throttle import LoginThrottle
from router.store.inbound import utcnow
from router.store.schema import api_tokens, audit_events, sessions, users

USERS = {"ada": ["admin"], "sam": ["support"], "vic": ["viewer"]}
a = audit_events.c


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, USERS) as running:
        yield running


def _bearer(site: Site, token: str) -> httpx.Client:
    return httpx.Client(base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"})


def _events(site: Site, *actions: str) -> list[tuple[str, str, str, dict]]:
    with site.running.store.read() as conn:
        rows = conn.execute(
            select(a.actor, a.action, a.target, a.details)
            .where(a.action.in_(actions))
            .order_by(a.id)
        )
        return [(r.actor, r.action, r.target, json.loads(r.details)) for r in rows]


def test_passwords_are_argon2_hashes_and_never_stored_plain(site):
    with site.running.store.read() as conn:
        hashes = dict(conn.execute(select(users.c.name, users.c.password_hash)).all())
    assert set(hashes) == set(USERS)
    for digest in hashes.values():
        assert digest.startswith("$argon2id$")
        assert PASSWORD not in digest
    assert len(set(hashes.values())) == len(hashes), "each hash has its own salt"


def test_users_and_tokens_through_the_api_are_audited_and_revocable(site):
    admin_token = api_token(site.running.store, "admin", name="ada")
    with _bearer(site, admin_token) as admin:
        created = admin.post(
            "/api/users", json={"name": "pat", "roles": ["support"], "password": "x" * 14}
        )
        assert created.status_code == 201, created.text
        assert admin.post("/api/users", json={"name": "pat", "roles": ["support"]}).status_code == (
            422
        )
        issued = admin.post("/api/users/pat/tokens", json={"roles": ["support"]})
        assert issued.status_code == 201
        token_id, token = issued.json()["id"], issued.json()["token"]
        beyond = admin.post("/api/users/pat/tokens", json={"roles": ["approver"]})
        assert beyond.status_code == 422, "a token cannot carry a role its user lacks"
        listed = {u["name"]: u for u in admin.get("/api/users").json()["users"]}
        assert listed["pat"]["roles"] == ["support"] and listed["pat"]["tokens"] == 1
        assert "token" not in json.dumps(admin.get("/api/users/pat/tokens").json()["tokens"][0])

        with _bearer(site, token) as pat:
            assert pat.get("/api/messages").status_code == 200
            assert pat.get("/api/users").status_code == 403
            assert admin.delete(f"/api/users/tokens/{token_id}").status_code == 204
            assert pat.get("/api/messages").status_code == 401

    with site.running.store.read() as conn:
        stored = conn.scalar(select(api_tokens.c.token_hash).where(api_tokens.c.id == token_id))
    assert stored != token and len(stored) == 64
    assert [e[:3] for e in _events(site, "user-add", "token-issue", "token-revoke")][-3:] == [
        ("ada", "user-add", "user:pat"),
        ("ada", "token-issue", "user:pat"),
        ("ada", "token-revoke", "user:pat"),
    ]


def test_a_disabled_user_cannot_sign_in_and_loses_sessions_and_tokens(site):
    console = sign_in(site.url, "sam")
    token = api_token(site.running.store, "support", name="sam")
    assert console.get("/messages").status_code == 200
    with _bearer(site, api_token(site.running.store, "admin", name="ada")) as admin:
        assert admin.post("/api/users/sam/disable").status_code == 200
    assert console.get("/messages").status_code == 303
    with _bearer(site, token) as script:
        assert script.get("/api/messages").status_code == 401
    with pytest.raises(AssertionError):
        sign_in(site.url, "sam")
    reasons = [e[3]["reason"] for e in _events(site, "login-failed")]
    assert reasons == ["disabled"]
    assert ("ada", "user-disable", "user:sam") in [e[:3] for e in _events(site, "user-disable")]


def test_session_cookie_is_httponly_and_strict_and_expires_when_idle_or_old(site):
    client = httpx.Client(base_url=site.url, timeout=10)
    form = client.get("/login")
    answer = client.post(
        "/login",
        data={"username": "vic", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
    )
    cookie = answer.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/api/channels").status_code == 200, "the API accepts the session too"

    store = site.running.store
    with store.begin() as conn:
        conn.execute(update(sessions).values(last_seen_at=utcnow() - timedelta(hours=1)))
    assert client.get("/").status_code == 303, "idle for an hour (limit: 30 minutes)"

    client = sign_in(site.url, "vic")
    with store.begin() as conn:
        conn.execute(update(sessions).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert client.get("/api/channels").status_code == 401
    with store.read() as conn:
        assert conn.execute(select(sessions)).all() == [], "expired sessions are deleted"


def test_unsafe_requests_on_a_session_need_its_csrf_token(site):
    client = sign_in(site.url, "sam")
    csrf = csrf_of(client.get("/").text)
    pause = "/api/channels/lab-orders/pause"
    assert client.post(pause, json={"reason": "x"}).status_code == 403
    wrong = client.post(pause, json={"reason": "x"}, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    assert client.post(pause, json={"reason": "x"}, headers={"X-CSRF-Token": csrf}).status_code == (
        200
    )
    assert client.post("/logout").status_code == 403, "a console form without its token"
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    assert client.get("/").status_code == 303, "signed out"


def test_login_needs_the_forms_own_token(site):
    client = httpx.Client(base_url=site.url, timeout=10)
    client.get("/login")
    forged = client.post(
        "/login", data={"username": "sam", "password": PASSWORD, "csrf_token": "guess"}
    )
    assert forged.status_code == 401 and SESSION_COOKIE not in forged.cookies


class Clock:
    """The throttle's clock, moved on by the test rather than waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_are_audited_without_the_password_and_slowed_down(site):
    app = site.running.engine.http.config.app
    clock = Clock()
    app.state.auth.throttle = LoginThrottle(free=5, first=60.0, clock=clock)
    client = httpx.Client(base_url=site.url, timeout=10)
    for attempt in range(7):
        form = client.get("/login")
        answer = client.post(
            "/login",
            data={
                "username": "sam",
                "password": f"wrong-guess-{attempt}",
                "csrf_token": csrf_of(form.text),
            },
        )
        assert answer.status_code == 401
    assert "Too many failed attempts" in answer.text
    form = client.get("/login")
    right = client.post(
        "/login",
        data={"username": "sam", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
    )
    assert right.status_code == 401, "even the right password waits out the throttle"
    failures = _events(site, "login-failed")
    assert [e[3]["reason"] for e in failures] == ["wrong password"] * 5 + ["throttled"]
    assert failures[-1][3]["refused"] == 1, "one row for the tries refused in a minute"
    assert all(e[:3] == ("sam", "login-failed", "user:sam") for e in failures)
    assert "wrong-guess" not in json.dumps(failures) and PASSWORD not in json.dumps(failures)
    assert sign_in(site.url, "vic"), "another user is not held up"
    clock.now += 3600.0
    sign_in(site.url, "sam")
    signed_in = _events(site, "login")[-1]
    assert signed_in[0] == "sam" and signed_in[3]["refused"] == 2, "the rest, counted"
    assert signed_in[3]["refused_from"] == ["127.0.0.1"]


def test_guesses_sent_side_by_side_are_throttled_too(site):
    """Each guess counts before its (slow) password check, so a burst cannot all pass."""
    app = site.running.engine.http.config.app
    app.state.auth.throttle = LoginThrottle(free=5, first=60.0)

    async def guess(client: httpx.AsyncClient, password: str) -> int:
        form = {"username": "sam", "password": password, "csrf_token": "t"}
        answer = await client.post("/login", data=form)
        return answer.status_code

    async def all_at_once() -> list[int]:
        login_cookie = {"tie_login": "t"}
        async with httpx.AsyncClient(base_url=site.url, timeout=60, cookies=login_cookie) as client:
            return await asyncio.gather(*(guess(client, f"wrong-guess-{i}") for i in range(20)))

    assert asyncio.run(all_at_once()) == [401] * 20
    failures = [e[3] for e in _events(site, "login-failed")]
    assert sorted(e["reason"] for e in failures) == ["throttled"] + ["wrong password"] * 5
    left = app.state.auth.throttle.unnoted("sam")  # refused after the last row was written
    counted = sum(e.get("refused", 0) for e in failures) + (left.count if left else 0)
    assert counted == 15, "each refused try counted once"
    client = httpx.Client(base_url=site.url, timeout=10)
    form = client.get("/login")
    data = {"username": "sam", "password": PASSWORD, "csrf_token": csrf_of(form.text)}
    assert client.post("/login", data=data).status_code == 401, "the right one waits too"


def test_a_success_clears_the_failures_counted_before_it(site):
    app = site.running.engine.http.config.app
    app.state.auth.throttle = LoginThrottle(free=5, first=60.0)

    def attempt(password: str) -> int:
        client = httpx.Client(base_url=site.url, timeout=10)
        form = client.get("/login")
        data = {"username": "sam", "password": password, "csrf_token": csrf_of(form.text)}
        return client.post("/login", data=data).status_code

    for _ in range(2):
        assert [attempt("wrong-guess") for _ in range(4)] == [401] * 4
        assert attempt(PASSWORD) == 303, "4 failures and a success: not throttled"


def test_a_session_in_use_outlives_an_idle_limit_under_a_minute(tmp_path, store_url):
    with running_site(tmp_path, store_url, USERS, auth={"session_idle": "5s"}) as short:
        client = sign_in(short.url, "vic")

        def three_seconds_pass() -> None:
            with short.running.store.begin() as conn:
                seen = conn.scalar(select(sessions.c.last_seen_at))
                conn.execute(update(sessions).values(last_seen_at=seen - timedelta(seconds=3)))

        for _ in range(3):  # a request every 3 s: never 5 s idle
            three_seconds_pass()
            assert client.get("/api/channels").status_code == 200
        with short.running.store.begin() as conn:
            conn.execute(update(sessions).values(last_seen_at=utcnow() - timedelta(seconds=6)))
        assert client.get("/api/channels").status_code == 401, "idle for 6 s"


def test_a_background_refresh_does_not_keep_a_session_alive(site):
    client = sign_in(site.url, "vic")
    store = site.running.store
    ten_minutes_ago = utcnow() - timedelta(minutes=10)

    def last_seen() -> object:
        with store.read() as conn:
            return conn.scalar(select(sessions.c.last_seen_at))

    with store.begin() as conn:
        conn.execute(update(sessions).values(last_seen_at=ten_minutes_ago))
    refresh = client.get("/", headers={"X-Background-Refresh": "true"})
    assert refresh.status_code == 200, "a refresh is still answered"
    assert last_seen() == ten_minutes_ago, "but it is not activity"
    assert client.get("/").status_code == 200
    assert last_seen() > ten_minutes_ago, "a request of the user's is"


def test_a_sending_systems_account_cannot_sign_in_to_the_console(tmp_path, store_url):
    with running_site(tmp_path, store_url, {"gp-system": ["sender"]}) as site:
        client = httpx.Client(base_url=site.url, timeout=10)
        form = client.get("/login")
        answer = client.post(
            "/login",
            data={"username": "gp-system", "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )
        assert answer.status_code == 401 and SESSION_COOKIE not in answer.cookies
        assert "sending system&#39;s account" in answer.text
        assert client.get("/").status_code == 303, "not signed in"
        reasons = [e[3]["reason"] for e in _events(site, "login-failed")]
        assert reasons == ["sender only"]


def test_a_flood_of_guesses_at_a_waiting_name_adds_one_audit_row_a_minute(site):
    """Refused tries check no password and cost nothing to send: each one was an audit row
    (140 a second from one client), so the log grew as fast as anyone cared to send."""
    app = site.running.engine.http.config.app
    clock = Clock()
    app.state.auth.throttle = LoginThrottle(free=1, first=600.0, clock=clock)
    client = httpx.Client(base_url=site.url, timeout=10)
    token = csrf_of(client.get("/login").text)

    def guesses(count: int) -> None:
        nonlocal token
        for i in range(count):
            data = {"username": "sam", "password": f"guess-{i}", "csrf_token": token}
            answer = client.post("/login", data=data)
            assert answer.status_code == 401
            token = csrf_of(answer.text)

    guesses(31)
    clock.now += 60.0
    guesses(10)
    failures = [e[3] for e in _events(site, "login-failed")]
    assert [(e["reason"], e.get("refused")) for e in failures] == [
        ("wrong password", None),
        ("throttled", 1),
        ("throttled", 30),
    ]
    assert app.state.auth.throttle.unnoted("sam").count == 9
