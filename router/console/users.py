"""The users page (admin only): accounts with their roles, state and last sign-in, and
their API tokens with when each was last used; adding a user, changing roles, disabling
and enabling, resetting a password, issuing, rotating, labelling and revoking a token,
each with a reason.

Every change goes through the services the CLI and the API use (router/auth/accounts.py,
users.py, tokens.py), in one transaction with its audit event, so the same guards hold:
the last enabled admin is kept, tokens follow their user's roles, the admin who sets a
password is recorded as its maker for four eyes. A refusal is shown on the page, its
dialog opened again with what was typed but passwords.

A new token's value (issued or rotated) is in the answer to the form that made it, once:
that page is not cached, the value is never in a URL, a redirect, a log line or the audit
row, and the page replaces its own history entry with /users, so reloading or going back
does not show it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import timedelta
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
from router.auth.tokens import (
    MAX_LABEL,
    Rotation,
    issue_token,
    list_tokens,
    relabel_token,
    revoke_token,
    rotate_token,
)
from router.auth.users import NAME, add_user, disable_user, list_users
from router.console.access import Admin
from router.console.form_once import form_outcome, once
from router.console.templating import render
from router.store.inbound import utcnow
from router.units import parse_duration

if TYPE_CHECKING:
    from router.engine import Engine

MAX_REASON = 1000
MAX_ROLES = len(ROLES)
MAX_NAME = 64
MAX_EXPIRES = 32  # "365d"; a duration, not a story
LONGEST_TOKEN = timedelta(days=3650)
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
    "labelled": "Changed the label of token {token}.",
    "added": "Added {user}.",
    "rotated": "Rotated token {old} into token {token} for {user}: the new value was shown "
    "once, in the answer to the form that rotated it; the old one works until its overlap ends.",
    "issued": "Issued token {token} for {user}: its value was shown once, in the answer to "
    "the form that issued it. If nobody kept it, revoke the token and issue another.",
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
        request: Request,
        principal: Principal,
        problem: str | None = None,
        status: int = 200,
        retry: Retry | None = None,
    ) -> HTMLResponse:
        context = await asyncio.to_thread(listing)
        context.update(
            principal=principal,
            csrf=csrf_token(request),
            problem=problem,
            done=_notice(request.query_params),
            roles=ROLES,
            max_password=MAX_LENGTH,
            max_label=MAX_LABEL,
            retry=retry or Retry(),
        )
        return render(request, "users.html", context, status_code=status)

    async def attempt(
        request: Request,
        principal: Principal,
        reason: str,
        work: Callable[[Connection], Any],
        retry: Retry | None = None,
        answer: Callable[[Any], Response] | None = None,
    ) -> Response:
        """Run ``work`` in a write transaction and say what it did (``answer``, else a
        redirect naming the outcome); a refusal (no reason, no such user or token, a guard)
        is shown on the page, ``retry``'s dialog open again, and changes nothing. Once per
        form (router/console/form_once.py)."""
        return await once(request, lambda: act(request, principal, reason, work, retry, answer))

    async def act(
        request: Request,
        principal: Principal,
        reason: str,
        work: Callable[[Connection], Any],
        retry: Retry | None,
        answer: Callable[[Any], Response] | None,
    ) -> Response:
        if not reason.strip():
            problem = "give a reason: it is kept in the audit log"
            return await page(request, principal, problem, 422, retry)

        def run() -> Any:
            with store.begin() as conn:
                return work(conn)

        try:
            outcome = await asyncio.to_thread(run)
        except LookupError as exc:
            return await page(request, principal, str(exc), 404, retry)
        except ValueError as exc:
            return await page(request, principal, str(exc), 422, retry)
        if answer is not None:
            return answer(outcome)
        return RedirectResponse(f"/users?{urlencode(outcome)}", status_code=303)

    @routes.get("/users", response_class=HTMLResponse)
    async def users(request: Request, principal: Admin) -> HTMLResponse:
        return await page(request, principal)

    @routes.post("/users/add")
    async def add(
        request: Request,
        principal: Admin,
        name: str = Form(default="", max_length=MAX_NAME),
        reason: str = Form(default="", max_length=MAX_REASON),
        role: Annotated[list[str] | None, Form(max_length=MAX_ROLES)] = None,
        new_password: str = Form(default="", max_length=MAX_LENGTH),
        again: str = Form(default="", max_length=MAX_LENGTH),
        tokens_only: bool = Form(default=False),
    ) -> Response:
        """``run.py users add`` and ``POST /api/users``: the admin is the password's maker.
        ``tokens_only``: no password, for a sending system (it cannot sign in)."""
        typed = {"name": name, "roles": role or [], "reason": reason, "tokens_only": tokens_only}

        def work(conn: Connection) -> dict[str, Any]:
            if tokens_only and (new_password or again):
                raise ValueError("a tokens-only user has no password: leave both empty")
            if not tokens_only and new_password != again:
                raise ValueError("the two passwords differ")
            if not role:
                raise ValueError("give the user at least one role")
            password = None if tokens_only else new_password
            user = add_user(conn, name, role, password, actor=principal.name, reason=reason)
            return {"done": "added", "user": user.name}

        return await attempt(request, principal, reason, work, Retry("add-user", typed))

    @routes.post("/users/{name}/tokens")
    async def issue(
        name: str,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
        role: Annotated[list[str] | None, Form(max_length=MAX_ROLES)] = None,
        expires: str = Form(default="", max_length=MAX_EXPIRES),
        label: str = Form(default="", max_length=MAX_LABEL),
    ) -> Response:
        """``run.py users token`` and ``POST /api/users/NAME/tokens``: the admin is its
        issuer. The answer is the one page that shows the token (router/console/users.py)."""
        typed = {"roles": role or [], "reason": reason, "expires": expires, "label": label}

        def work(conn: Connection) -> tuple[int, str]:
            if not role:
                raise ValueError("give the token at least one role")
            until = utcnow() + _lifetime(expires) if expires.strip() else None
            return issue_token(
                conn, name, role, actor=principal.name, expires_at=until, reason=reason, label=label
            )

        def shown(issued: tuple[int, str]) -> Response:
            token_id, token = issued
            form_outcome(
                request, f"/users?{urlencode({'done': 'issued', 'user': name, 'token': token_id})}"
            )
            context = {"principal": principal, "csrf": csrf_token(request)}
            context.update(token_id=token_id, token=token, user=name, roles=sorted(role or ()))
            context.update(label=label.strip())
            return render(request, "token_issued.html", context)

        retry = Retry(f"token-{name}", typed)
        return await attempt(request, principal, reason, work, retry, shown)

    @routes.post("/users/tokens/{token_id}/rotate")
    async def rotate(
        token_id: IdPath,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
        overlap: str = Form(default="24h", max_length=MAX_EXPIRES),
        expires: str = Form(default="", max_length=MAX_EXPIRES),
    ) -> Response:
        """``run.py users token rotate`` and ``POST /api/users/tokens/ID/rotate``: a new
        token with the old one's user, roles and label, shown once like an issued one; the
        old one works on for ``overlap``, then expires."""
        typed = {"reason": reason, "overlap": overlap, "expires": expires}

        def work(conn: Connection) -> Rotation:
            beside = _lifetime(overlap, "old token works on for")
            until = utcnow() + _lifetime(expires) if expires.strip() else None
            return rotate_token(
                conn,
                token_id,
                actor=principal.name,
                overlap=beside,
                expires_at=until,
                reason=reason,
            )

        def shown(done: Rotation) -> Response:
            query = {"done": "rotated", "user": done.user, "token": done.new_id, "old": token_id}
            form_outcome(request, f"/users?{urlencode(query)}")
            context = {"principal": principal, "csrf": csrf_token(request)}
            context.update(token_id=done.new_id, token=done.token, user=done.user)
            context.update(rotated=token_id, old_expires_at=done.old_expires_at)
            return render(request, "token_issued.html", context)

        retry = Retry(f"rotate-{token_id}", typed)
        return await attempt(request, principal, reason, work, retry, shown)

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

    @routes.post("/users/tokens/{token_id}/label")
    async def relabel(
        token_id: IdPath,
        request: Request,
        principal: Admin,
        reason: str = Form(default="", max_length=MAX_REASON),
        label: str = Form(default="", max_length=MAX_LABEL),
    ) -> Response:
        """``run.py users token label`` and ``PATCH /api/users/tokens/ID``."""

        def work(conn: Connection) -> dict[str, Any]:
            relabel_token(conn, token_id, label, actor=principal.name, reason=reason)
            return {"done": "labelled", "token": token_id}

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


class Retry:
    """A refused form's dialog (``dialog``: the one to open again) and what was typed in it,
    passwords never."""

    def __init__(self, dialog: str = "", typed: dict[str, Any] | None = None) -> None:
        self.dialog = dialog
        self.typed = typed or {}

    def value(self, dialog: str, field: str, default: Any = "") -> Any:
        return self.typed.get(field, default) if dialog == self.dialog else default


def _lifetime(text: str, field: str = "expires after") -> timedelta:
    """A token's lifetime (or overlap) from ``90d``, ``12h``...: more than nothing, at most
    ten years."""
    try:
        span = timedelta(seconds=parse_duration(text.strip()))
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from exc
    if span <= timedelta(0):
        raise ValueError(f"{field}: give a lifetime longer than nothing, e.g. 90d")
    if span > LONGEST_TOKEN:
        raise ValueError(f"{field}: at most 3650d")
    return span


def _notice(params: Mapping[str, str]) -> str | None:
    """The sentence for ``?done=``, naming the user or token acted on."""
    template = DONE.get(params.get("done", ""))
    if template is None:
        return None
    user = params.get("user", "")
    fields = {
        "user": user if NAME.fullmatch(user) else "?",
        "token": _number(params.get("token", "")),
        "old": _number(params.get("old", "")),
    }
    revoked = [_number(i) for i in params.get("revoked", "").split(",") if i]
    text = template.format(**fields)
    if revoked:
        text += REVOKED_TOO.format(revoked=", ".join(revoked[:20]), **fields)
    return text


def _number(text: str) -> str:
    return text if text.isdigit() and len(text) < 20 else "?"
