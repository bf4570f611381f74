"""``/api/channels`` (state, counts, queues, and the "post office" switch) and ``/api/jobs``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, HTTPException

from router.api.messages import jsonable
from router.api.security import Principal, require_role
from router.channel_control import set_paused
from router.console.statistics import dashboard
from router.dps.jobs import list_jobs
from router.store.inbound import utcnow

if TYPE_CHECKING:
    from router.engine import Engine


def channel_routes(engine: Engine) -> APIRouter:
    routes = APIRouter(tags=["channels"])
    store = engine.store

    @routes.get("/api/channels")
    async def channels(_: Principal = Depends(require_role("viewer"))) -> list[dict[str, Any]]:
        """Each channel: paused or not, its unprocessed backlog, its queue depth (``queued``:
        deliveries waiting or in flight) and the age in seconds of the oldest, ``failed``
        and ``held`` now, counts of the last hour and the last 24 hours, and the last error."""
        rows = await asyncio.to_thread(dashboard, store, sorted(engine.channels))
        now = utcnow()
        for row in rows:
            oldest = row["oldest_queued"]
            row["oldest_queued_age"] = (now - oldest).total_seconds() if oldest else None
        return jsonable(sorted(rows, key=lambda r: r["channel"]))

    async def _switch(name: str, paused: bool, actor: Principal, reason: str) -> dict[str, Any]:
        if name not in engine.channels:
            raise HTTPException(404, f"no channel named {name!r}")
        await asyncio.to_thread(set_paused, store, name, paused, actor=actor.name, reason=reason)
        if not paused:
            engine.processor.wake()
        return {"channel": name, "paused": paused}

    @routes.post("/api/channels/{name}/pause")
    async def pause(
        name: str,
        reason: str = Body(default="", embed=True, max_length=1000),
        actor: Principal = Depends(require_role("support")),
    ) -> dict[str, Any]:
        """Stop processing the channel's messages; they are still received and stored."""
        return await _switch(name, True, actor, reason)

    @routes.post("/api/channels/{name}/resume")
    async def resume(
        name: str,
        reason: str = Body(default="", embed=True, max_length=1000),
        actor: Principal = Depends(require_role("support")),
    ) -> dict[str, Any]:
        """Process the channel again, its backlog first, in receive order."""
        return await _switch(name, False, actor, reason)

    @routes.get("/api/jobs", tags=["dps"])
    async def jobs(_: Principal = Depends(require_role("viewer"))) -> list[dict[str, Any]]:
        """DPS handoff jobs, newest first, with their statistics."""
        return jsonable(await asyncio.to_thread(list_jobs, store))

    return routes
