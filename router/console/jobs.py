"""The DPS jobs page: each job's status, statistics, undelivered outputs and closure; and
closing a failed job nothing else will end (support, audited; router/dps/closing.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from router.api.security import csrf_token
from router.console.access import Support, Viewer
from router.console.form_once import once
from router.console.templating import render
from router.dps.closing import NoSuchJob, NotClosable, close_job, closure
from router.dps.jobs import list_jobs

if TYPE_CHECKING:
    from router.engine import Engine


def job_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store
    overdue_after = engine.config.dps.overdue_after

    @routes.get("/jobs", response_class=HTMLResponse)
    async def jobs(request: Request, principal: Viewer) -> HTMLResponse:
        context = {
            "principal": principal,
            "csrf": csrf_token(request),
            "jobs": await asyncio.to_thread(list_jobs, store, overdue_after=overdue_after),
            "closure": closure,
            "closed": request.query_params.get("closed"),
        }
        return render(request, "jobs.html", context)

    @routes.post("/jobs/{job_id}/close")
    async def close(
        job_id: str,
        request: Request,
        principal: Support,
        reason: str = Form(default="", max_length=1000),
    ) -> Response:
        async def act() -> Response:
            try:
                await asyncio.to_thread(
                    close_job, store, job_id, reason=reason, actor=principal.name
                )
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from exc
            except NoSuchJob as exc:
                raise HTTPException(404, str(exc)) from exc
            except NotClosable as exc:
                raise HTTPException(409, str(exc)) from exc
            return RedirectResponse("/jobs?closed=1", status_code=303)

        return await once(request, act)

    return routes
