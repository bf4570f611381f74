"""``/login`` and ``/logout``: console sessions (router/auth/sessions.py).

The login form is protected from cross-site posting by a double-submit token (a
cookie and a form field that must match), the session by its own CSRF token.
Failures are audited without the password and slowed down per user name
(router/auth/throttle.py); the tries refused while a name waits are counted, one audit
row a minute per name. The answer never says whether the name exists.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.responses import JSONResponse, RedirectResponse

from router import audit
from router.api.security import (
    SESSION_COOKIE,
    Authenticator,
    Principal,
    authenticator,
    public_route,
    require_console,
)
from router.auth.roles import SENDER, grants
from router.auth.sessions import end_session, keep_alive, start_session
from router.auth.throttle import Refusals, with_refusals
from router.auth.users import User, check_password, count_users
from router.console.session_clock import session_clock
from router.console.templating import SECURITY_HEADERS, render

if TYPE_CHECKING:
    from router.engine import Engine

LOGIN_COOKIE = "tie_login"
FAILED = "Wrong user name or password, or the account is disabled."
# A sending system's account: its token is for the FHIR endpoints, and the console has
# nothing it may see (every page would be a 403).
SENDER_ONLY = (
    f"This is a sending system's account (role {SENDER}): it sends with its token and cannot"
    " sign in to the console."
)


def safe_next(target: str) -> str:
    """Only a path on this site (never ``//host`` or a URL), so a link cannot send users away."""
    if target.startswith("/") and not target.startswith(("//", "/\\")) and len(target) <= 2000:
        return target
    return "/"


def login_routes(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["console"], include_in_schema=False)
    store = engine.store

    def page(
        request: Request,
        auth: Authenticator,
        *,
        next_path: str,
        error: str = "",
        username: str = "",
    ) -> Response:
        token = secrets.token_urlsafe(32)
        with store.read() as conn:
            no_users = count_users(conn) == 0
        context = {
            "login_csrf": token,
            "next": next_path,
            "error": error,
            "username": username,
            "no_users": no_users,
        }
        code = status.HTTP_401_UNAUTHORIZED if error else status.HTTP_200_OK
        response = render(request, "login.html", context, status_code=code)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=3600,
            httponly=True,
            samesite="strict",
            secure=auth.secure_cookie(request),
        )
        return response

    @router.get("/login")
    @public_route
    async def login_form(request: Request, next: str = "/") -> Response:
        auth = authenticator(request)
        if await auth.by_session(request) is not None:
            return RedirectResponse(safe_next(next), status.HTTP_303_SEE_OTHER)
        return await asyncio.to_thread(page, request, auth, next_path=safe_next(next))

    @router.post("/login")
    @public_route
    async def login(
        request: Request,
        username: str = Form(max_length=64),
        password: str = Form(max_length=1024),
        csrf_token: str = Form(default="", max_length=128),
        next: str = Form(default="/", max_length=2000),
    ) -> Response:
        auth = authenticator(request)
        target = safe_next(next)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(expected.encode(), csrf_token.encode()):
            error = "The sign-in form expired. Please try again."
            return await asyncio.to_thread(page, request, auth, next_path=target, error=error)
        remote = request.client.host if request.client else ""
        wait = auth.throttle.wait(username)
        if wait > 0:
            auth.throttle.failed(username)  # guessing on while locked out locks for longer
            due = auth.throttle.refused(username, remote)
            if due is not None:  # one row a minute per name, with the count since the last
                await asyncio.to_thread(_failed, store, username, "throttled", remote, due)
            error = f"Too many failed attempts. Try again in {int(wait) + 1} seconds."
            return await asyncio.to_thread(
                page, request, auth, next_path=target, error=error, username=username
            )
        # Counted as a failure before the password is checked, with no await since wait():
        # guesses sent side by side cannot all pass the check above. A success clears it.
        auth.throttle.failed(username)
        user, why = await asyncio.to_thread(_check, store, username, password)
        unnoted = auth.throttle.unnoted(username)
        if user is None:
            await asyncio.to_thread(_failed, store, username, why, remote, unnoted)
            return await asyncio.to_thread(
                page, request, auth, next_path=target, error=FAILED, username=username
            )
        auth.throttle.succeeded(username)
        if not grants(user.roles, "viewer"):
            await asyncio.to_thread(_failed, store, username, "sender only", remote, unnoted)
            return await asyncio.to_thread(
                page, request, auth, next_path=target, error=SENDER_ONLY, username=username
            )
        lifetime = auth.options.session_lifetime
        old = request.cookies.get(SESSION_COOKIE, "")
        cookie = await asyncio.to_thread(_start, store, user, lifetime, remote, old, unnoted)
        response = RedirectResponse(target, status.HTTP_303_SEE_OTHER)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(lifetime),
            httponly=True,
            samesite="strict",
            secure=auth.secure_cookie(request),
        )
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @router.post("/session/keep-alive")
    async def keep_session_alive(
        request: Request, principal: Principal = Depends(require_console())
    ) -> JSONResponse:
        """The warning's "Stay signed in": activity now, and when the session will end."""
        auth = authenticator(request)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        idle = auth.options.session_idle
        session = await asyncio.to_thread(keep_alive, store, cookie, idle=idle)
        if session is None:  # ended since require_console found it
            return JSONResponse({"detail": "signed out"}, status.HTTP_401_UNAUTHORIZED)
        request.state.session = session
        return JSONResponse(session_clock(request), headers=SECURITY_HEADERS)

    @router.post("/logout")
    async def logout(
        request: Request, principal: Principal = Depends(require_console())
    ) -> Response:
        cookie = request.cookies.get(SESSION_COOKIE, "")

        def end() -> None:
            with store.begin() as conn:
                end_session(conn, cookie)
                audit.append(conn, principal.name, "logout", f"user:{principal.name}", {})

        await asyncio.to_thread(end)
        response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
        response.delete_cookie(SESSION_COOKIE)
        return response

    return router


def _check(store: Any, name: str, password: str) -> tuple[Any, str]:
    with store.read() as conn:
        return check_password(conn, name, password)


def _failed(store: Any, name: str, why: str, remote: str, refusals: Refusals | None = None) -> None:
    details = with_refusals({"reason": why, "from": remote}, refusals)
    with store.begin() as conn:
        audit.append(conn, name, "login-failed", f"user:{name}", details)


def _start(
    store: Any,
    user: User,
    lifetime: float,
    remote: str,
    old: str,
    refusals: Refusals | None,
) -> str:
    """A new session (a new id: never one the browser brought along), ending the old one."""
    with store.begin() as conn:
        end_session(conn, old)
        cookie, _ = start_session(
            conn, user.id, lifetime=lifetime, password_set_by=user.password_set_by
        )
        details = with_refusals({"from": remote}, refusals)
        audit.append(conn, user.name, "login", f"user:{user.name}", details)
        return cookie
