"""Every route of the real app is authenticated and role-checked: generated from the route table.

A route added without ``require_role`` / ``require_console`` fails here, as does a public
route that is not on the short list below. Anonymous callers get 401 (API) or a redirect
to /login (console pages); a caller holding none of the route's roles gets 403. Routes
that ask only for ``viewer`` have no wrong role: any signed-in user may see metadata,
except a ``sender``, a sending system's account, which is refused every route.
The FHIR and proxy *source* endpoints are not in the route table (router/api/gateway_asgi.py
answers them for sending systems, with a sender's token: see docs/fhir.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from console_testing import PASSWORD, Site, csrf_of, running_site, sign_in
from fastapi import FastAPI
from tie_testing import api_token

from router.api.security import SESSION_COOKIE, is_public, route_roles, route_table
from router.auth.roles import ROLES
from router.auth.sessions import start_session
from router.auth.users import add_user

PUBLIC = {
    ("/health", "GET"),
    ("/login", "GET"),
    ("/login", "POST"),
    ("/docs", "GET"),
    ("/docs/oauth2-redirect", "GET"),
    ("/openapi.json", "GET"),
    ("/static", "*"),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("routes")
    with running_site(tmp, f"sqlite:///{tmp / 'tie.db'}", {}) as running:
        yield running


def _app(site: Site) -> FastAPI:
    assert site.running.engine.http is not None
    return site.running.engine.http.config.app


def _checked(app: FastAPI) -> Iterator[tuple[Any, str, str]]:
    for route in route_table(app):
        if is_public(route):
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in sorted(route.methods or {"GET"}):
            yield route, method, path


def _label(route: Any, method: str) -> str:
    return f"{method} {getattr(route, 'path', route)}"


def test_public_routes_are_exactly_the_listed_ones(site):
    found = set()
    for route in route_table(_app(site)):
        if is_public(route):
            methods = getattr(route, "methods", None) or {"*"}
            found |= {(route.path, m) for m in methods if m != "HEAD"}
    assert found == PUBLIC


def test_every_other_route_declares_its_roles(site):
    missing = [
        _label(route, method)
        for route, method, _ in _checked(_app(site))
        if route_roles(route) is None
    ]
    assert missing == [], "routes without require_role / require_console"


def test_anonymous_callers_are_refused(site):
    wrong = []
    with httpx.Client(base_url=site.url, timeout=10) as anonymous:
        for route, method, path in _checked(_app(site)):
            _, console = route_roles(route) or ((), False)
            answer = anonymous.request(method, path)
            if console:
                ok = answer.status_code == 303 and answer.headers["location"].startswith(
                    "/login?next="
                )
            else:
                ok = answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
            if not ok:
                wrong.append(f"{_label(route, method)} -> {answer.status_code}")
    assert wrong == []


def _lacking(roles: tuple[str, ...]) -> list[str]:
    """The non-admin roles other than ``roles``: a principal with them lacks every one."""
    return [r for r in ROLES if r not in roles and r != "admin"]


def test_callers_without_the_role_are_forbidden(site):
    store = site.running.store
    clients: dict[tuple[str, ...], httpx.Client] = {}
    wrong, checked = [], 0
    try:
        for route, method, path in _checked(_app(site)):
            roles, console = route_roles(route) or ((), False)
            others = _lacking(roles)
            if not roles or "viewer" in roles or not others:
                continue
            key = (*others, "console" if console else "api")
            if key not in clients:
                name = f"u{len(clients)}"
                if console:
                    with store.begin() as conn:
                        add_user(conn, name, others, PASSWORD, actor="test")
                    clients[key] = sign_in(site.url, name)
                    clients[key].headers["X-CSRF-Token"] = csrf_of(clients[key].get("/").text)
                else:
                    token = api_token(store, *others, name=name)
                    clients[key] = httpx.Client(
                        base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
                    )
            answer = clients[key].request(method, path)
            checked += 1
            if answer.status_code != 403:
                wrong.append(f"{_label(route, method)} as {others} -> {answer.status_code}")
    finally:
        for client in clients.values():
            client.close()
    assert wrong == []
    assert checked >= 10, "the route table should hold more role-checked routes than this"


# Console POST routes that change nothing, so carry no one-time form nonce.
NO_FORM_NONCE = {
    "/logout",
    "/session/keep-alive",
    "/messages/bulk/preview",
    "/messages/{message_id}/reprocess/preview",
    "/deliveries/{delivery_id}/resend/preview",
    "/deliveries/{delivery_id}/cancel/preview",
}


def test_every_console_form_that_acts_needs_its_one_time_nonce(site):
    """A form sent without the nonce its page carried is refused before it acts, so a
    second sending of one form can never act twice (router/console/form_once.py)."""
    with site.running.store.begin() as conn:
        add_user(conn, "root", ["admin"], PASSWORD, actor="test")
    admin = sign_in(site.url, "root")
    csrf = csrf_of(admin.get("/").text)
    form = {"csrf_token": csrf, "form_nonce": "", "channel": "x", "text": "y", "reason": "r"}
    wrong, checked = [], 0
    for route, method, path in _checked(_app(site)):
        _, console = route_roles(route) or ((), False)
        if not console or method != "POST" or route.path in NO_FORM_NONCE:
            continue
        answer = admin.post(path, data={**form, "action": "resend"})
        checked += 1
        if answer.status_code != 403 or "one-time token" not in answer.text:
            wrong.append(f"{_label(route, method)} -> {answer.status_code}")
    admin.close()
    assert wrong == []
    assert checked >= 18


def test_public_routes_answer_anonymous_callers(site):
    with httpx.Client(base_url=site.url, timeout=10) as anonymous:
        for path in ("/health", "/openapi.json", "/docs", "/login", "/static/htmx.min.js"):
            assert anonymous.get(path).status_code == 200, path
        spec = anonymous.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "/api/messages/reprocess" in spec["paths"] and "/metrics" in spec["paths"]


def test_a_sender_is_refused_every_route(site):
    """A sending system's account posts to the FHIR sources and the proxy, and sees nothing:
    not even the metadata every other user may (no implied viewer), by token or session."""
    store = site.running.store
    token = api_token(store, "sender", name="gp-system")
    with store.begin() as conn:
        # Signing in refuses a sender (test_auth.py); a session made by other means (one
        # started before the account became a sender's) must still open nothing.
        user = add_user(conn, "gp-person", ["sender"], PASSWORD, actor="test")
        cookie, _ = start_session(conn, user.id, lifetime=3600, password_set_by=None)
    api = httpx.Client(base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"})
    console = httpx.Client(base_url=site.url, timeout=10, cookies={SESSION_COOKIE: cookie})
    wrong, checked = [], 0
    try:
        for route, method, path in _checked(_app(site)):
            _, on_console = route_roles(route) or ((), False)
            answer = (console if on_console else api).request(method, path)
            checked += 1
            if answer.status_code != 403:
                wrong.append(f"{_label(route, method)} -> {answer.status_code}")
    finally:
        api.close()
        console.close()
    assert wrong == []
    assert checked >= 10
