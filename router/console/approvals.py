"""The approvals inbox: proposed channel revisions with their diff, and held batches with
their summary, each approved or rejected here.

The four-eyes rules live in ``router.governance`` (its services refuse an author's own
approval, count distinct approvers, check roles against the user table); this module
checks the session's role first and shows a refusal as a plain sentence on the page.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from router import governance
from router.api.security import Principal, csrf_token
from router.console.access import Approver, Engineer, Requester, Reviewer, Viewer
from router.console.templating import render
from router.governance.deploy import running_texts
from router.governance.models import OPEN, PENDING, PROPOSED

if TYPE_CHECKING:
    from router.engine import Engine

MAX_REASON = 1000
MAX_YAML = 256 * 1024
DONE = {
    "proposed": "Proposed: it waits for another person's approval.",
    "approved": "Approved.",
    "rejected": "Rejected.",
    "requested": "Release requested: it waits for approvals.",
    "released": "Approval recorded.",
}


def approval_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store

    def inbox() -> dict[str, Any]:
        proposals = governance.list_revisions(store, state=PROPOSED)
        diffs = {p.id: governance.diff(store, p.channel, p.number).text for p in proposals}
        batches = governance.list_batches(store, states=(OPEN, PENDING))
        summaries = [
            governance.open_batch_summary(store, b.channel, b.destination)
            if b.id is None
            else governance.batch_summary(store, b.id)
            for b in batches
        ]
        decided = governance.list_revisions(store, limit=20)
        return {"proposals": proposals, "diffs": diffs, "summaries": summaries, "recent": decided}

    async def page(
        request: Request, principal: Principal, problem: str | None = None, status: int = 200
    ) -> HTMLResponse:
        context = await asyncio.to_thread(inbox)
        done = request.query_params.get("done", "")
        context.update(
            principal=principal,
            csrf=csrf_token(request),
            problem=problem,
            done=DONE.get(done),
            channels=sorted(engine.channels),
        )
        return render(request, "approvals.html", context, status_code=status)

    async def attempt(request: Request, principal: Principal, done: str, act: Any) -> Response:
        """Run a governance action; on refusal, show the inbox with the reason."""
        try:
            await asyncio.to_thread(act)
        except governance.GovernanceError as exc:
            problems = getattr(exc, "problems", [])
            text = "; ".join([str(exc), *problems])
            return await page(request, principal, text, _status(exc))
        return RedirectResponse(f"/approvals?done={done}", status_code=303)

    @routes.get("/approvals", response_class=HTMLResponse)
    async def approvals(request: Request, principal: Viewer) -> HTMLResponse:
        return await page(request, principal)

    @routes.get("/approvals/propose", response_class=HTMLResponse)
    async def propose_form(request: Request, principal: Engineer) -> HTMLResponse:
        channel = request.query_params.get("channel", "")[:64]
        text = await asyncio.to_thread(_current_text, engine, channel)
        return render(
            request,
            "propose.html",
            {
                "principal": principal,
                "csrf": csrf_token(request),
                "channel": channel,
                "channels": sorted(engine.channels),
                "text": text,
            },
        )

    @routes.post("/approvals/propose")
    async def propose(
        request: Request,
        principal: Engineer,
        channel: str = Form(max_length=64),
        text: str = Form(max_length=MAX_YAML),
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def act() -> None:
            governance.propose(
                store,
                engine.config,
                channel,
                text.replace("\r\n", "\n"),
                actor=principal.name,
                reason=reason,
            )

        return await attempt(request, principal, "proposed", act)

    @routes.post("/approvals/revisions/{channel}/{number}/approve")
    async def approve(
        channel: str,
        number: int,
        request: Request,
        principal: Approver,
    ) -> Response:
        def act() -> None:
            governance.approve(store, channel, number, actor=principal.name)

        return await attempt(request, principal, "approved", act)

    @routes.post("/approvals/revisions/{channel}/{number}/reject")
    async def reject(
        channel: str,
        number: int,
        request: Request,
        principal: Reviewer,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def act() -> None:
            governance.reject(store, channel, number, actor=principal.name, reason=reason)

        return await attempt(request, principal, "rejected", act)

    @routes.post("/approvals/holds/{channel}/{destination}/request")
    async def request_release(
        channel: str,
        destination: str,
        request: Request,
        principal: Requester,
    ) -> Response:
        configs = {name: c.config for name, c in engine.channels.items()}

        def act() -> None:
            governance.request_release(store, configs, channel, destination, actor=principal.name)

        return await attempt(request, principal, "requested", act)

    @routes.post("/approvals/holds/{batch_id}/approve")
    async def approve_batch(
        batch_id: int,
        request: Request,
        principal: Approver,
    ) -> Response:
        def act() -> None:
            governance.approve_batch(store, batch_id, actor=principal.name)

        return await attempt(request, principal, "released", act)

    @routes.post("/approvals/holds/{batch_id}/reject")
    async def reject_batch(
        batch_id: int,
        request: Request,
        principal: Approver,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def act() -> None:
            governance.reject_batch(store, batch_id, actor=principal.name, reason=reason)

        return await attempt(request, principal, "rejected", act)

    return routes


def _status(exc: Exception) -> int:
    if isinstance(exc, governance.FourEyesViolation | governance.RoleRequired):
        return 403
    if isinstance(exc, governance.NotFound):
        return 404
    if isinstance(exc, governance.InvalidRevision):
        return 422
    return 409


def _current_text(engine: Engine, channel: str) -> str:
    """The text to start editing from: the running revision, else the channel file."""
    if channel not in engine.channels:
        return ""
    stored = running_texts(engine.store).get(channel)
    if stored is not None:
        return stored.yaml
    path = engine.config.channels / f"{channel}.yaml"
    return path.read_text(encoding="utf-8") if path.is_file() else ""
