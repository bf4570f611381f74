"""The dashboard (per-channel figures, failures first) and the channel pause/resume switch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from router.api.security import csrf_token
from router.channel_control import set_paused
from router.channel_health import channel_health
from router.console.access import Support, Viewer
from router.console.form_once import once
from router.console.statistics import dashboard
from router.console.templating import render

if TYPE_CHECKING:
    from router.engine import Engine


def dashboard_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store

    @routes.get("/", response_class=HTMLResponse)
    async def home(request: Request, principal: Viewer) -> HTMLResponse:
        health = channel_health(engine)
        rows = await asyncio.to_thread(dashboard, store, list(health), health)
        return render(
            request,
            "dashboard.html",
            {"principal": principal, "csrf": csrf_token(request), "channels": rows},
        )

    @routes.post("/channels/{name}/{switch}")
    async def pause_or_resume(
        name: str,
        switch: str,
        request: Request,
        principal: Support,
        reason: str = Form(default="", max_length=1000),
    ) -> Response:
        """Pause: messages are still received and stored, not processed. Resume: backlog first."""
        paused = switch == "pause"

        async def act() -> Response:
            if name not in engine.channels:
                raise HTTPException(404, f"no channel named {name!r}")
            if switch not in ("pause", "resume"):
                raise HTTPException(404, "pause or resume")
            await asyncio.to_thread(
                set_paused, store, name, paused, actor=principal.name, reason=reason
            )
            if not paused:
                engine.processor.wake()
            return RedirectResponse("/", status_code=303)

        return await once(request, act)

    return routes
