"""Who is calling, and may they: the dependencies every API and console route declares.

Scripts send ``Authorization: Bearer <token>``; the console's browser sends the
session cookie, and with every unsafe request (POST, PUT, PATCH, DELETE) the
session's CSRF token, in the ``X-CSRF-Token`` header or a form's ``csrf_token``
field. A route is public only when it is marked with ``public_route`` (or is one
of FastAPI's documentation routes); the route-table test holds every other route
to this.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.routing import Mount

from router.auth.roles import ROLES, grants
from router.auth.sessions import load_session
from router.auth.throttle import LoginThrottle
from router.auth.token_use import use_token
from router.auth.users import case_clashes, count_users
from router.config.engine import AuthOptions
from router.repeat_log import RepeatLog
from router.store.database import Store

log = logging.getLogger(__name__)

SESSION_COOKIE = "tie_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# Sent by the console's own timed refreshes (console.js): not a person's activity.
BACKGROUND_HEADER = "X-Background-Refresh"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})
FIRST_ADMIN = "python run.py users add admin --role admin"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

_bearer = HTTPBearer(auto_error=False, description="an API token: `run.py users token`")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user, by session (console) or by API token."""

    name: str
    roles: frozenset[str]
    via: str
    # Who made the credential in use: the token's issuer, or whoever set the password the
    # session signed in with. None: not known. Four eyes holds it to the author's rule.
    made_by: str | None = None

    def has(self, role: str) -> bool:
        """Admin holds every role; any signed-in user but a sender may see metadata (viewer)."""
        return grants(self.roles, role)

    def has_any(self, roles: tuple[str, ...]) -> bool:
        """No roles: any user who may sign in to see something (a viewer; not a sender)."""
        return any(self.has(r) for r in roles) if roles else self.has("viewer")


class LoginRequired(Exception):
    """A console page asked for without a live session: answered with a redirect to /login
    that comes back to ``path``; for htmx (``htmx``), one htmx makes the whole page follow,
    rather than swapping the sign-in page into a fragment of the page."""

    def __init__(self, path: str, htmx: bool = False) -> None:
        self.path = path
        self.htmx = htmx


class ConsoleForbidden(Exception):
    """A console request refused (role or CSRF): answered with router/console/errors.py's page."""

    def __init__(self, detail: str) -> None:
        self.detail = detail


class Authenticator:
    """The store lookups behind the dependencies, and the login throttle (one per app)."""

    def __init__(self, store: Store, options: AuthOptions) -> None:
        self.store = store
        self.options = options
        self.throttle = LoginThrottle()
        # A client hammering with a bad token: once per host every few minutes.
        self.refused = RepeatLog(log)

    async def by_token(self, token: str) -> Principal | None:
        found = await asyncio.to_thread(use_token, self.store, token)
        return Principal(found.name, found.roles, "token", found.issued_by) if found else None

    async def by_session(self, request: Request) -> Principal | None:
        """The session's principal; its CSRF token is kept on ``request.state``.

        A background refresh (``BACKGROUND_HEADER``) does not count as activity, or an open
        page refreshing itself would keep its session from ever going idle."""
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        idle = self.options.session_idle
        activity = request.headers.get(BACKGROUND_HEADER) != "true"
        session = await asyncio.to_thread(
            load_session, self.store, cookie, idle=idle, activity=activity
        )
        if session is None:
            return None
        request.state.csrf = session.csrf
        request.state.session = session
        return Principal(session.name, session.roles, "session", session.password_set_by)

    def secure_cookie(self, request: Request) -> bool:
        if self.options.secure_cookie == "always" or request.url.scheme == "https":
            return True
        return (request.url.hostname or "") not in _LOOPBACK


def authenticator(request: Request) -> Authenticator:
    return request.app.state.auth


async def _csrf_given(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def _csrf_ok(request: Request) -> bool:
    if request.method not in UNSAFE:
        return True
    expected = getattr(request.state, "csrf", "")
    given = await _csrf_given(request)
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def _known(roles: tuple[str, ...]) -> None:
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")


def require_role(
    *roles: str, refusal: type[HTTPException] = HTTPException
) -> Callable[..., Awaitable[Principal]]:
    """Dependency for JSON API routes: a bearer token or a session with one of ``roles``.

    No roles means any signed-in user. Anonymous is 401, the wrong role 403, and an
    unsafe request on a session without its CSRF token 403, each raised as ``refusal``:
    FastAPI's ``{"detail": ...}`` by default; the FHIR routes answer theirs as a FHIR
    OperationOutcome (router/api/fhir.py).
    """
    _known(roles)

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        auth = authenticator(request)
        if credentials is not None:
            principal = await auth.by_token(credentials.credentials)
            if principal is None:
                host = request.client.host if request.client else "an unknown address"
                auth.refused.warning(
                    host,
                    "refused a request from %s with an invalid or expired token (%s %s)",
                    host,
                    request.method,
                    request.url.path,
                )
                raise refusal(
                    status.HTTP_401_UNAUTHORIZED,
                    "invalid or expired token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        else:
            principal = await auth.by_session(request)
            if principal is None:
                raise refusal(
                    status.HTTP_401_UNAUTHORIZED,
                    "authentication required",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not await _csrf_ok(request):
                raise refusal(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token")
        if not principal.has_any(roles):
            raise refusal(status.HTTP_403_FORBIDDEN, f"needs the role {' or '.join(roles)}")
        request.state.principal = principal
        return principal

    dependency.tie_roles = roles  # type: ignore[attr-defined]
    return dependency


def require_console(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency for console HTML routes: a session only; anonymous goes to /login."""
    _known(roles)

    async def dependency(request: Request) -> Principal:
        principal = await authenticator(request).by_session(request)
        if principal is None:
            htmx = request.headers.get("HX-Request") == "true"
            raise LoginRequired(_return_to(request, htmx), htmx)
        if not await _csrf_ok(request):
            raise ConsoleForbidden("The form was missing its CSRF token. Reload the page.")
        if not principal.has_any(roles):
            raise ConsoleForbidden(f"This needs the role {' or '.join(roles)}.")
        request.state.principal = principal
        return principal

    dependency.tie_roles = roles  # type: ignore[attr-defined]
    dependency.tie_console = True  # type: ignore[attr-defined]
    return dependency


def _return_to(request: Request, htmx: bool) -> str:
    """Where signing in leads back to: the page asked for, or for a form's post or an htmx
    request the page they were sent from (its URL is only a POST route, a 405 once signed
    in, or a fragment of a page). Only its path and query are kept."""
    if request.method in ("GET", "HEAD") and not htmx:
        source = str(request.url)
    else:
        source = request.headers.get("HX-Current-URL") or request.headers.get("referer") or "/"
    parts = urlsplit(source)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def csrf_token(request: Request) -> str:
    """The signed-in session's CSRF token, for forms and ``hx-headers`` in templates."""
    return getattr(request.state, "csrf", "")


def public_route(endpoint: F) -> F:
    """Mark an endpoint as deliberately anonymous (health, login, protocol endpoints)."""
    endpoint.tie_public = True  # type: ignore[attr-defined]
    return endpoint


def route_table(app: FastAPI) -> list[Any]:
    """Every route of ``app``, routers included (FastAPI keeps included routers nested)."""
    return list(iter_route_contexts(app.routes))


def route_roles(route: Any) -> tuple[tuple[str, ...], bool] | None:
    """The roles a route's ``require_role``/``require_console`` asks for, and whether it is a
    console page; None when it declares neither (the route-table test fails on that)."""
    dependant = getattr(route, "dependant", None)
    pending = list(dependant.dependencies) if dependant else []
    while pending:
        sub = pending.pop()
        if hasattr(sub.call, "tie_roles"):
            return sub.call.tie_roles, getattr(sub.call, "tie_console", False)
        pending.extend(sub.dependencies)
    return None


def is_public(route: Any) -> bool:
    """True for a route marked ``public_route``, the OpenAPI docs, and static files."""
    if isinstance(getattr(route, "original_route", route), Mount):
        return getattr(route, "path", None) == "/static"
    if getattr(route, "path", None) in DOCS_PATHS:
        return True
    return bool(getattr(getattr(route, "endpoint", None), "tie_public", False))


def login_redirect(path: str) -> RedirectResponse:
    safe = path if path.startswith("/") and not path.startswith("//") else "/"
    return RedirectResponse(f"/login?next={quote(safe, safe='/')}", status.HTTP_303_SEE_OTHER)


def install(app: FastAPI, store: Store, options: AuthOptions) -> None:
    """Attach the authenticator and the console's answers; say how to make the first admin."""
    app.state.auth = Authenticator(store, options)

    async def to_login(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        redirect = login_redirect(exc.path)
        if exc.htmx:
            return Response(status_code=401, headers={"HX-Redirect": redirect.headers["location"]})
        return redirect

    app.add_exception_handler(LoginRequired, to_login)
    with store.read() as conn:
        if count_users(conn) == 0:
            log.warning("no users yet: create the first admin with `%s`", FIRST_ADMIN)
        for names in case_clashes(conn):
            log.warning(
                "users %s differ only in case: the four-eyes rules count them as one person; "
                "disable all but one (`run.py users disable NAME --actor ADMIN`)",
                " and ".join(names),
            )
