"""The users page (admin only): accounts with their roles, state and last sign-in, and
their API tokens with when each was last used; changing roles, disabling and enabling,
resetting a password and revoking a token, each with a reason.

Every change goes through the services the CLI and the API use (router/auth/accounts.py,
users.py, tokens.py), in one transaction with its audit event, so the same guards hold:
the last enabled admin is kept, tokens follow their user's roles, the admin who sets a
password is recorded as its maker for four eyes. A refusal is shown on the page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import Connection

from router.api.params import IdPath
from router.api.security import Principal, csrf_token
from router.auth.accounts import change_roles, enable_user, set_password
from router.auth.passwords import MAX_LENGTH
from router.auth.roles import ROLES
from router.auth.tokens import list_tokens, revoke_token
from router.auth.users import NAME, disable_user, list_users
from router.console.access import Admin
from router.console.templating import render

if TYPE_CHECKING:
    from router.engine import Engine

MAX_REASON = 1000
MAX_ROLES = len(ROLES)
# What the page says after a change; the fields come back in the redirect's query string
# and are checked in ``_notice`` (a user name or a number), so nobody can word a notice.
DONE = {
    "roles": "Changed the roles of {user}: their sessions and tokens have them from their "
    "next request.",
    "unchanged": "{user} already holds those roles: nothing changed.",
    "disabled": "Disabled {user}: their sessions are ended and their tokens revoked.",
    "enabled": "Enabled {user}: they may sign in again; none of their old tokens works.",
    "password": "Set the password of {user}: their sessions are ended.",
    "revoked": "Revoked token {token}.",
}
REVOKED_TOO = " Revoked token(s) {revoked}: they held no role {user} still has."


def user_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store

    def listing() -> dict[str, Any]:
        with store.read() as conn:
            tokens = list_tokens(conn)
            return {
                "users": list_users(conn),
                "live": [t for t in tokens if t["state"] == "live"],
                "ended": [t for t in tokens if t["state"] != "live"],
            }

    async def page(
        request: Request, principal: Principal, problem: str | None = None, status: int = 200
    ) -> HTMLResponse:
        context = await asyncio.to_thread(listing)
        context.update(
            principal=principal,
            csrf=csrf_token(request),
            problem=problem,
            done=_notice(request.query_params),
            roles=ROLES,
            max_password=MAX_LENGTH,
        )
        return render(request, "users.html", context, status_code=status)

    async def attempt(
        request: Request,
        principal: Principal,
        reason: str,
        work: Callable[[Connection], dict[str, Any]],
    ) -> Response:
        """Run ``work`` in a write transaction and say what it did; a refusal (no reason,
        no such user or token, a guard) is shown on the page and changes nothing."""
        if not reason.strip():
            return await page(request, principal, "give a reason: it is kept in the audit log", 422)

        def run() -> dict[str, Any]:
            with store.begin() as conn:
                return work(conn)

        try:
            outcome = await asyncio.to_thread(run)
        except LookupError as exc:
            return await page(request, principal, str(exc), 404)
        except ValueError as exc:
            return await page(request, principal, str(exc), 422)
        return RedirectResponse(f"/users?{urlencode(outcome)}", status_code=303)

    @routes.get("/users", response_class=HTMLResponse)
    async def users(request: Request, principal: Admin) -> HTMLResponse:
        return await page(request, principal)

    @routes.post("/users/{name}/roles")
    async def roles(
        name: str,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
        role: Annotated[list[str] | None, Form(max_length=MAX_ROLES)] = None,
        held: Annotated[list[str] | None, Form(max_length=MAX_ROLES)] = None,
    ) -> Response:
        """``role``: the boxes ticked; ``held``: the roles the page showed. What changed
        between them is added and removed, so a change made meanwhile by someone else is
        neither undone nor repeated."""
        ticked, shown = set(role or ()), set(held or ())
        add, remove = sorted(ticked - shown), sorted(shown - ticked)

        def work(conn: Connection) -> dict[str, Any]:
            if not add and not remove:
                return {"done": "unchanged", "user": name}
            change = change_roles(
                conn, name, add=add, remove=remove, actor=principal.name, reason=reason
            )
            done = "roles" if change.added or change.removed else "unchanged"
            revoked = ",".join(str(i) for i in change.tokens_revoked)
            return {"done": done, "user": name, "revoked": revoked}

        return await attempt(request, principal, reason, work)

    @routes.post("/users/{name}/disable")
    async def disable(
        name: str,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def work(conn: Connection) -> dict[str, Any]:
            disable_user(conn, name, actor=principal.name, reason=reason)
            return {"done": "disabled", "user": name}

        return await attempt(request, principal, reason, work)

    @routes.post("/users/{name}/enable")
    async def enable(
        name: str,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def work(conn: Connection) -> dict[str, Any]:
            enable_user(conn, name, actor=principal.name, reason=reason)
            return {"done": "enabled", "user": name}

        return await attempt(request, principal, reason, work)

    @routes.post("/users/{name}/password")
    async def password(
        name: str,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
        new_password: str = Form(default="", max_length=MAX_LENGTH),
        again: str = Form(default="", max_length=MAX_LENGTH),
    ) -> Response:
        """An admin's reset: the user's sessions end, and the admin is recorded as the
        password's maker (four eyes, docs/governance.md)."""

        def work(conn: Connection) -> dict[str, Any]:
            if new_password != again:
                raise ValueError("the two passwords differ")
            set_password(conn, name, new_password, actor=principal.name, reason=reason)
            return {"done": "password", "user": name}

        return await attempt(request, principal, reason, work)

    @routes.post("/users/tokens/{token_id}/revoke")
    async def revoke(
        token_id: IdPath,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def work(conn: Connection) -> dict[str, Any]:
            revoke_token(conn, token_id, actor=principal.name, reason=reason)
            return {"done": "revoked", "token": token_id}

        return await attempt(request, principal, reason, work)

    return routes


def _notice(params: Mapping[str, str]) -> str | None:
    """The sentence for ``?done=``, naming the user or token acted on."""
    template = DONE.get(params.get("done", ""))
    if template is None:
        return None
    user = params.get("user", "")
    fields = {
        "user": user if NAME.fullmatch(user) else "?",
        "token": _number(params.get("token", "")),
    }
    revoked = [_number(i) for i in params.get("revoked", "").split(",") if i]
    text = template.format(**fields)
    if revoked:
        text += REVOKED_TOO.format(revoked=", ".join(revoked[:20]), **fields)
    return text


def _number(text: str) -> str:
    return text if text.isdigit() and len(text) < 20 else "?"
