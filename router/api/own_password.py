"""``/api/me/password``: a signed-in user changes their own password, knowing the current one.

Guessing the current password here is slowed and audited as signing in is (the same
throttle, ``login-failed`` events), so a stolen session cannot be used to try passwords
faster than the login form allows.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from router import audit
from router.api.security import SESSION_COOKIE, Principal, authenticator, require_role
from router.auth.accounts import password_matches, set_password
from router.auth.passwords import MAX_LENGTH, check_length
from router.auth.throttle import Refusals, with_refusals

if TYPE_CHECKING:
    from router.engine import Engine
    from router.store.database import Store

anyone = require_role()


class OwnPasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str = Field(max_length=MAX_LENGTH)
    new_password: str = Field(max_length=MAX_LENGTH)


def own_password_routes(engine: Engine) -> APIRouter:
    """``/api/me/password``: a signed-in user changes their own password."""
    router = APIRouter(prefix="/api/me", tags=["users"])
    store = engine.store

    @router.post("/password", status_code=204)
    async def change(
        body: OwnPasswordIn, request: Request, principal: Principal = Depends(anyone)
    ) -> Response:
        """Needs the current password, guessed no faster than at sign-in (the same
        throttle; a wrong one is audited as ``login-failed``). Ends the user's other
        sessions; the one asking (a console session) stays signed in."""
        try:
            check_length(body.new_password)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        auth = authenticator(request)
        name = principal.name
        remote = request.client.host if request.client else ""
        if auth.throttle.wait(name) > 0:
            auth.throttle.failed(name)
            due = auth.throttle.refused(name, remote)
            if due is not None:
                await asyncio.to_thread(_refused, store, name, remote, due)
            raise HTTPException(429, "too many failed attempts: try again later")
        auth.throttle.failed(name)  # before the slow check, as at sign-in
        unnoted = auth.throttle.unnoted(name)
        keep = request.cookies.get(SESSION_COOKIE, "") if principal.via == "session" else ""

        def run() -> bool:  # True when changed
            with store.read() as conn:
                right = password_matches(conn, name, body.current_password)
            with store.begin() as conn:
                if not right:
                    why = {"reason": "wrong current password", "from": remote}
                    why = with_refusals(why, unnoted)
                    audit.append(conn, name, "login-failed", f"user:{name}", why)
                    return False
                if unnoted is not None:  # refused tries no row has counted yet
                    why = with_refusals({"reason": "throttled", "from": remote}, unnoted)
                    audit.append(conn, name, "login-failed", f"user:{name}", why)
                set_password(conn, name, body.new_password, actor=name, keep_session=keep)
                return True

        if not await asyncio.to_thread(run):
            raise HTTPException(403, "the current password is wrong")
        auth.throttle.succeeded(name)
        return Response(status_code=204)

    return router


def _refused(store: Store, name: str, remote: str, refusals: Refusals) -> None:
    details = with_refusals({"reason": "throttled", "from": remote}, refusals)
    with store.begin() as conn:
        audit.append(conn, name, "login-failed", f"user:{name}", details)
