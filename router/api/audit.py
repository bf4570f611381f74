"""``/api/audit``: the audit log, newest first with filters, and the chain's verification."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query

from router import audit
from router.api.messages import jsonable
from router.api.params import Cursor, MomentQuery
from router.api.security import Principal, require_role

if TYPE_CHECKING:
    from router.engine import Engine


def audit_routes(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/api/audit", tags=["audit"])
    store = engine.store

    @router.get("")
    async def events(
        _: Principal = Depends(require_role("support", "approver")),
        actor: str | None = Query(default=None, max_length=128),
        action: str | None = Query(
            default=None, max_length=65, description="ending in `*`: a prefix, as `resend*`"
        ),
        target: str | None = Query(
            default=None, max_length=256, description="ending in `*`: a prefix, as `channel:*`"
        ),
        since: MomentQuery = None,
        until: MomentQuery = None,
        before: Cursor = None,
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Audit events, newest first (``target`` is e.g. ``urn:tie:message:<uuid>``)."""
        query = audit.EventFilter(actor, action, target, since, until, before, limit)

        def read() -> list[dict[str, Any]]:
            with store.read() as conn:
                return audit.events(conn, query)

        rows = await asyncio.to_thread(read)
        return {"events": jsonable(rows), "next": rows[-1]["id"] if len(rows) == limit else None}

    @router.get("/verify")
    async def verify(_: Principal = Depends(require_role("support", "approver"))) -> dict[str, Any]:
        """Recompute the hash chain; ``broken_id`` names the first event that does not fit."""
        return asdict(await asyncio.to_thread(audit.verify, store))

    return router
