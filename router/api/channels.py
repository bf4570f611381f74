"""``/api/channels`` (the "post office" switch: pause and resume) and ``/api/jobs`` (DPS)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, HTTPException

from router.api.auth import require_token
from router.channel_control import overview, set_paused
from router.dps.jobs import list_jobs

if TYPE_CHECKING:
    from router.engine import Engine


def channel_routes(engine: Engine) -> APIRouter:
    routes = APIRouter(tags=["channels"])
    store = engine.store

    @routes.get("/api/channels")
    async def channels(_: str = Depends(require_token)) -> list[dict[str, Any]]:
        """Each channel: paused or not, its unprocessed backlog and its queues."""
        return await asyncio.to_thread(overview, store, sorted(engine.channels))

    async def _switch(name: str, paused: bool, actor: str, reason: str) -> dict[str, Any]:
        if name not in engine.channels:
            raise HTTPException(404, f"no channel named {name!r}")
        await asyncio.to_thread(set_paused, store, name, paused, actor=actor, reason=reason)
        if not paused:
            engine.processor.wake()
        return {"channel": name, "paused": paused}

    @routes.post("/api/channels/{name}/pause")
    async def pause(
        name: str, reason: str = Body(default="", embed=True), actor: str = Depends(require_token)
    ) -> dict[str, Any]:
        """Stop processing the channel's messages; they are still received and stored."""
        return await _switch(name, True, actor, reason)

    @routes.post("/api/channels/{name}/resume")
    async def resume(
        name: str, reason: str = Body(default="", embed=True), actor: str = Depends(require_token)
    ) -> dict[str, Any]:
        """Process the channel again, its backlog first, in receive order."""
        return await _switch(name, False, actor, reason)

    @routes.get("/api/jobs", tags=["dps"])
    async def jobs(_: str = Depends(require_token)) -> list[dict[str, Any]]:
        """DPS handoff jobs, newest first, with their statistics."""
        rows = await asyncio.to_thread(list_jobs, store)
        return [
            {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in r.items()} for r in rows
        ]

    return routes


def _plain(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value
