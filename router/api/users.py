"""``/api/users``: accounts and their API tokens (admin only); each change is audited."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from router.api.messages import jsonable
from router.api.params import IdPath, Moment
from router.api.security import Principal, require_role
from router.auth.accounts import change_roles, enable_user, set_password
from router.auth.passwords import MAX_LENGTH
from router.auth.tokens import (
    MAX_LABEL,
    issue_token,
    list_tokens,
    relabel_token,
    revoke_token,
    rotate_token,
)
from router.auth.users import add_user, disable_user, find_user, list_users
from router.config._base import PositiveDuration
from router.store.inbound import utcnow
from router.units import parse_duration

if TYPE_CHECKING:
    from router.engine import Engine

admin = require_role("admin")


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    roles: list[str] = Field(min_length=1, max_length=5)
    password: str | None = Field(
        default=None, max_length=MAX_LENGTH, description="none: a token-only account"
    )
    reason: str = Field(default="", max_length=1000, description="why: kept in the audit log")


class RolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default=[], max_length=6)
    remove: list[str] = Field(default=[], max_length=6)
    reason: str = Field(min_length=1, max_length=1000, description="why: kept in the audit log")


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, description="why: kept in the audit log")


class OptionalReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000, description="why: kept in the audit log")


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(max_length=MAX_LENGTH)
    reason: str = Field(default="", max_length=1000, description="why: kept in the audit log")


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap: PositiveDuration = Field(
        default=86400.0, description="how long the old token works on, e.g. 24h (default)"
    )
    expires_at: Moment | None = Field(
        default=None, description="the new token's; default: as long as the old one was given"
    )
    reason: str = Field(default="", max_length=1000, description="why: kept in the audit log")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(min_length=1, max_length=5)
    expires_at: Moment | None = None
    reason: str = Field(default="", max_length=1000, description="why: kept in the audit log")
    label: str | None = Field(
        default=None,
        max_length=MAX_LABEL,
        description="a name for it in listings, e.g. 'PAS live'; printable text",
    )


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(
        max_length=MAX_LABEL, description="the token's new label; empty or null: none"
    )
    reason: str = Field(default="", max_length=1000, description="why: kept in the audit log")


def user_routes(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/api/users", tags=["users"])
    store = engine.store

    async def write(work: Any) -> Any:
        def run() -> Any:
            with store.begin() as conn:
                return work(conn)

        try:
            return await asyncio.to_thread(run)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from exc
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

    @router.get("")
    async def users(_: Principal = Depends(admin)) -> dict[str, Any]:
        def read() -> list[dict[str, Any]]:
            with store.read() as conn:
                return list_users(conn)

        return {"users": jsonable(await asyncio.to_thread(read))}

    @router.post("", status_code=201)
    async def add(body: UserIn, principal: Principal = Depends(admin)) -> dict[str, Any]:
        user = await write(
            lambda conn: add_user(
                conn, body.name, body.roles, body.password, actor=principal.name, reason=body.reason
            )
        )
        return {"id": user.id, "name": user.name, "roles": sorted(user.roles)}

    @router.post("/{name}/roles")
    async def roles(
        name: str, body: RolesIn, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """Add and remove roles: the user's sessions and tokens have the new set on their next
        request; a token left with no role the user holds is revoked (``tokens_revoked``).
        422 when it would leave no enabled admin, or the user with no role."""
        change = await write(
            lambda conn: change_roles(
                conn,
                name,
                add=body.add,
                remove=body.remove,
                actor=principal.name,
                reason=body.reason,
            )
        )
        return {
            "name": change.user.name,
            "roles": sorted(change.user.roles),
            "added": change.added,
            "removed": change.removed,
            "tokens_revoked": change.tokens_revoked,
        }

    @router.post("/{name}/disable")
    async def disable(
        name: str, body: OptionalReasonIn | None = None, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """Disable the account: its sessions end and its tokens are revoked. 422 for the
        last enabled admin. The body (``{"reason": "..."}``) may be left out."""
        reason = body.reason if body else ""
        user = await write(
            lambda conn: disable_user(conn, name, actor=principal.name, reason=reason)
        )
        return {"name": user.name, "disabled": True}

    @router.post("/{name}/password")
    async def password(
        name: str, body: PasswordIn, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """Set the user's password (an admin's reset) and end all their sessions."""
        user = await write(
            lambda conn: set_password(
                conn, name, body.password, actor=principal.name, reason=body.reason
            )
        )
        return {"name": user.name}

    @router.post("/{name}/enable")
    async def enable(
        name: str, body: ReasonIn, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """Let a disabled user sign in again; none of their old tokens comes back. 422 when
        they are not disabled, or another enabled user has their name but for its case."""
        user = await write(
            lambda conn: enable_user(conn, name, actor=principal.name, reason=body.reason)
        )
        return {"name": user.name, "disabled": False}

    @router.get("/{name}/tokens")
    async def tokens(name: str, _: Principal = Depends(admin)) -> dict[str, Any]:
        """The user's tokens (never their values); 404 for no such user, as issuing says."""

        def read() -> list[dict[str, Any]] | None:
            with store.read() as conn:
                return list_tokens(conn, name) if find_user(conn, name) else None

        found = await asyncio.to_thread(read)
        if found is None:
            raise HTTPException(404, f"no user {name!r}")
        return {"tokens": jsonable(found)}

    @router.post("/{name}/tokens", status_code=201)
    async def issue(
        name: str, body: TokenIn, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """A new token; it is in this answer once and never stored (only its hash is). An
        ``expires_at`` already past is a 422: that token would never work."""
        if body.expires_at is not None and body.expires_at <= utcnow():
            raise HTTPException(422, "expires_at is past: the token would never work")
        token_id, token = await write(
            lambda conn: issue_token(
                conn,
                name,
                body.roles,
                actor=principal.name,
                expires_at=body.expires_at,
                reason=body.reason,
                label=body.label,
            )
        )
        return {"id": token_id, "token": token}

    @router.get("/tokens/expiring")
    async def expiring(within: str = "30d", _: Principal = Depends(admin)) -> dict[str, Any]:
        """Live tokens of every user that expire ``within`` (e.g. 30d), soonest first."""
        try:
            span = timedelta(seconds=parse_duration(within))
        except ValueError as exc:
            raise HTTPException(422, f"within: {exc}") from exc

        def read() -> list[dict[str, Any]]:
            with store.read() as conn:
                return list_tokens(conn, expiring_within=span)

        return {"tokens": jsonable(await asyncio.to_thread(read))}

    @router.post("/tokens/{token_id}/rotate", status_code=201)
    async def rotate(
        token_id: IdPath, body: RotateIn, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """A new token (in this answer once) with the old one's user, roles and label; the
        old one works on for ``overlap``, then expires: no moment without a working token."""
        if body.expires_at is not None and body.expires_at <= utcnow():
            raise HTTPException(422, "expires_at is past: the token would never work")
        done = await write(
            lambda conn: rotate_token(
                conn,
                token_id,
                actor=principal.name,
                overlap=timedelta(seconds=body.overlap),
                expires_at=body.expires_at,
                reason=body.reason,
            )
        )
        return {
            "id": done.new_id,
            "token": done.token,
            "expires_at": jsonable(done.expires_at),
            "old_expires_at": jsonable(done.old_expires_at),
        }

    @router.patch("/tokens/{token_id}")
    async def relabel(
        token_id: IdPath, body: LabelIn, principal: Principal = Depends(admin)
    ) -> dict[str, Any]:
        """Change the token's label (the token itself is unchanged); audited."""
        label = await write(
            lambda conn: relabel_token(
                conn, token_id, body.label, actor=principal.name, reason=body.reason
            )
        )
        return {"id": token_id, "label": label}

    @router.delete("/tokens/{token_id}", status_code=204)
    async def revoke(
        token_id: IdPath,
        body: OptionalReasonIn | None = None,
        principal: Principal = Depends(admin),
    ) -> Response:
        """Revoke the token: it stops working at once, for good. The body
        (``{"reason": "..."}``) may be left out, as for disabling a user; the reason is kept
        in the ``token-revoke`` audit event when given."""
        reason = body.reason if body else ""
        await write(lambda conn: revoke_token(conn, token_id, actor=principal.name, reason=reason))
        return Response(status_code=204)

    return router
