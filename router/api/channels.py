"""``/api/channels`` (state, counts, queues, and the "post office" switch) and ``/api/jobs``
(DPS jobs, and closing a failed one)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from router.api.messages import jsonable
from router.api.security import Principal, require_role
from router.channel_control import set_paused
from router.channel_health import channel_health
from router.console.statistics import dashboard
from router.dps.closing import NoSuchJob, NotClosable, close_job
from router.dps.jobs import list_jobs
from router.store.inbound import utcnow

if TYPE_CHECKING:
    from router.engine import Engine


class SwitchIn(BaseModel):
    """A pause or resume: the reason is optional, but a misspelt field (``reson``) is a 422
    rather than a switch whose audit event silently lost its reason."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000, description="why (kept in the audit log)")


class CloseIn(BaseModel):
    """Closing a job: why is required (kept on the job and in the audit log)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, pattern=r"\S", description="why")


def channel_routes(engine: Engine) -> APIRouter:
    routes = APIRouter(tags=["channels"])
    store = engine.store
    overdue_after = engine.config.dps.overdue_after

    @routes.get("/api/channels")
    async def channels(_: Principal = Depends(require_role("viewer"))) -> list[dict[str, Any]]:
        """Each channel: paused or not, its unprocessed backlog, its queue depth (``queued``:
        deliveries waiting or in flight) and the age in seconds of the oldest, ``failed``
        and ``held`` now, counts of the last hour and the last 24 hours, the last error, and
        what this node does with it: ``state``, the ``revision`` it runs, the newest
        ``deployed`` one, ``fallback`` (it runs an older one) and the ``reason``."""
        health = channel_health(engine)
        rows = await asyncio.to_thread(dashboard, store, list(health), health)
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
        body: SwitchIn | None = None,
        actor: Principal = Depends(require_role("support")),
    ) -> dict[str, Any]:
        """Stop processing the channel's messages; they are still received and stored."""
        return await _switch(name, True, actor, body.reason if body else "")

    @routes.post("/api/channels/{name}/resume")
    async def resume(
        name: str,
        body: SwitchIn | None = None,
        actor: Principal = Depends(require_role("support")),
    ) -> dict[str, Any]:
        """Process the channel again, its backlog first, in receive order."""
        return await _switch(name, False, actor, body.reason if body else "")

    @routes.get("/api/jobs", tags=["dps"])
    async def jobs(_: Principal = Depends(require_role("viewer"))) -> list[dict[str, Any]]:
        """DPS handoff jobs, newest first, with their statistics, their undelivered outputs
        (deliveries failed for good, to resend), whether DPS's answer is ``overdue``,
        whether support may close each and, once closed, who closed them and why."""
        found = await asyncio.to_thread(list_jobs, store, overdue_after=overdue_after)
        return jsonable(found)

    @routes.post("/api/jobs/{job_id}/close", tags=["dps"])
    async def close(
        job_id: str, body: CloseIn, actor: Principal = Depends(require_role("support"))
    ) -> dict[str, Any]:
        """Close a failed job nothing else will end (``failed_outputs``, ``failed_delivery``,
        ``failed_results``), or a finished one naming an undelivered output, with an audit
        event: retention then treats it as settled. 404 for no such job, 409 for one in
        progress, or finished with nothing undelivered."""
        try:
            closed = await asyncio.to_thread(
                close_job, store, job_id, reason=body.reason, actor=actor.name
            )
        except NoSuchJob as exc:
            raise HTTPException(404, str(exc)) from exc
        except NotClosable as exc:
            raise HTTPException(409, str(exc)) from exc
        return jsonable(closed)

    return routes
