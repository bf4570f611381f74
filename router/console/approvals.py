"""The approvals inbox: proposed channel revisions with their diff, and held batches with
their summary, each approved or rejected here.

The four-eyes rules live in ``router.governance`` (its services refuse an author's own
approval, count distinct approvers, check roles against the user table); this module
checks the session's role first and shows a refusal as a plain sentence on the page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from router import governance
from router.api.params import IdPath, NumberPath
from router.api.security import Principal, csrf_token
from router.config import channel_file
from router.config._base import CHANNEL_NAME
from router.console.access import Approver, Engineer, Requester, Reviewer, Viewer
from router.console.form_once import once
from router.console.templating import render
from router.governance.deploy import running_texts
from router.governance.models import (
    OPEN,
    PENDING,
    PROPOSED,
    REJECTED,
    RELEASED,
    HeldBatch,
    Revision,
)

if TYPE_CHECKING:
    from router.engine import Engine

MAX_REASON = 1000
MAX_YAML = 256 * 1024
RECENT = 20  # revisions and decided batches listed on the page
# What the page says after an action; the fields come back in the redirect's query string
# and are checked in ``_notice`` (a channel name or a number), so nobody can word a notice.
DONE = {
    "proposed": "Proposed {channel} #{number}: it waits for another person's approval.",
    "rolled-back": "Proposed {channel} #{number}, a rollback: it waits for another person's "
    "approval.",
    "approved": "Approved {channel} #{number}.",
    "rejected": "Rejected {channel} #{number}.",
    "requested": "Release of batch #{batch} requested: it waits for approvals.",
    "batch-approved": "Approval of batch #{batch} recorded: it waits for more approvals.",
    "released": "Batch #{batch} released: its deliveries are queued.",
    "batch-rejected": "Rejected batch #{batch}: its deliveries are cancelled.",
}
Outcome = Callable[[Any], dict[str, Any]]


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
        return {
            "proposals": proposals,
            "diffs": diffs,
            "summaries": summaries,
            "recent": governance.list_revisions(store, limit=RECENT),
            "running": {name: text.number for name, text in running_texts(store).items()},
            "decisions": governance.list_batches(store, states=(RELEASED, REJECTED), limit=RECENT),
        }

    async def page(
        request: Request, principal: Principal, problem: str | None = None, status: int = 200
    ) -> HTMLResponse:
        context = await asyncio.to_thread(inbox)
        context.update(
            principal=principal,
            csrf=csrf_token(request),
            problem=problem,
            done=_notice(request.query_params),
            channels=sorted(engine.channels),
            governed=engine.config.governance == "governed",
        )
        return render(request, "approvals.html", context, status_code=status)

    def editor(
        request: Request,
        principal: Principal,
        channel: str,
        text: str,
        *,
        reason: str = "",
        problem: str | None = None,
        status: int = 200,
    ) -> HTMLResponse:
        """The propose form; after a refusal it keeps what was typed and says why."""
        context = {
            "principal": principal,
            "csrf": csrf_token(request),
            "channel": channel,
            "channels": sorted(engine.channels),
            "text": text,
            "reason": reason,
            "problem": problem,
        }
        return render(request, "propose.html", context, status_code=status)

    async def attempt(
        request: Request,
        principal: Principal,
        act: Callable[[], Any],
        outcome: Outcome,
        refused: Callable[[str, int], HTMLResponse] | None = None,
    ) -> Response:
        """Run a governance action and say what it did, once per form (form_once.py); on
        refusal, show the reason on the inbox (or through ``refused``, which gets the reason
        and the status)."""
        return await once(request, lambda: act_once(request, principal, act, outcome, refused))

    async def act_once(
        request: Request,
        principal: Principal,
        act: Callable[[], Any],
        outcome: Outcome,
        refused: Callable[[str, int], HTMLResponse] | None,
    ) -> Response:
        try:
            result = await asyncio.to_thread(act)
        except governance.GovernanceError as exc:
            text = "; ".join([str(exc), *getattr(exc, "problems", [])])
            if refused is not None:
                return refused(text, _status(exc))
            return await page(request, principal, text, _status(exc))
        return RedirectResponse(f"/approvals?{urlencode(outcome(result))}", status_code=303)

    @routes.get("/approvals", response_class=HTMLResponse)
    async def approvals(request: Request, principal: Viewer) -> HTMLResponse:
        return await page(request, principal)

    @routes.get("/approvals/propose", response_class=HTMLResponse)
    async def propose_form(request: Request, principal: Engineer) -> HTMLResponse:
        channel = request.query_params.get("channel", "")[:64]
        text = await asyncio.to_thread(_current_text, engine, channel)
        return editor(request, principal, channel, text)

    @routes.post("/approvals/propose")
    async def propose(
        request: Request,
        principal: Engineer,
        channel: str = Form(max_length=64),
        text: str = Form(max_length=MAX_YAML),
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        text = text.replace("\r\n", "\n")

        def act() -> Revision:
            return governance.propose(
                store, engine.config, channel, text, actor=principal.name, reason=reason
            )

        def refused(problem: str, status: int) -> HTMLResponse:
            return editor(
                request, principal, channel, text, reason=reason, problem=problem, status=status
            )

        return await attempt(request, principal, act, _revision_done("proposed"), refused)

    @routes.post("/approvals/revisions/{channel}/{number}/rollback")
    async def rollback(
        channel: str,
        number: NumberPath,
        request: Request,
        principal: Engineer,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        """Propose revision ``number``'s text again: a new revision, approved like any other."""

        def act() -> Revision:
            return governance.rollback(
                store, engine.config, channel, number, actor=principal.name, reason=reason
            )

        return await attempt(request, principal, act, _revision_done("rolled-back"))

    @routes.post("/approvals/revisions/{channel}/{number}/approve")
    async def approve(
        channel: str,
        number: NumberPath,
        request: Request,
        principal: Approver,
    ) -> Response:
        def act() -> Revision:
            return governance.approve(
                store,
                engine.config,
                channel,
                number,
                actor=principal.name,
                made_by=principal.made_by,
            )

        return await attempt(request, principal, act, _revision_done("approved"))

    @routes.post("/approvals/revisions/{channel}/{number}/reject")
    async def reject(
        channel: str,
        number: NumberPath,
        request: Request,
        principal: Reviewer,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def act() -> Revision:
            return governance.reject(store, channel, number, actor=principal.name, reason=reason)

        return await attempt(request, principal, act, _revision_done("rejected"))

    @routes.post("/approvals/holds/{channel}/{destination}/request")
    async def request_release(
        channel: str,
        destination: str,
        request: Request,
        principal: Requester,
    ) -> Response:
        configs = {name: c.config for name, c in engine.channels.items()}

        def act() -> HeldBatch:
            return governance.request_release(
                store, configs, channel, destination, actor=principal.name
            )

        return await attempt(request, principal, act, _batch_done)

    @routes.post("/approvals/holds/{batch_id}/approve")
    async def approve_batch(
        batch_id: IdPath,
        request: Request,
        principal: Approver,
    ) -> Response:
        def act() -> HeldBatch:
            found = governance.approve_batch(
                store, batch_id, actor=principal.name, made_by=principal.made_by
            )
            if found.state == RELEASED:  # send now, not at the dispatcher's next poll
                engine.dispatcher.notify({(found.channel, found.destination)})
            return found

        return await attempt(request, principal, act, _batch_done)

    @routes.post("/approvals/holds/{batch_id}/reject")
    async def reject_batch(
        batch_id: IdPath,
        request: Request,
        principal: Approver,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        def act() -> HeldBatch:
            return governance.reject_batch(store, batch_id, actor=principal.name, reason=reason)

        return await attempt(request, principal, act, _batch_done)

    return routes


def _revision_done(done: str) -> Outcome:
    return lambda revision: {"done": done, "channel": revision.channel, "number": revision.number}


def _batch_done(batch: HeldBatch) -> dict[str, Any]:
    done = {
        PENDING: "batch-approved" if batch.approvers else "requested",
        RELEASED: "released",
        REJECTED: "batch-rejected",
    }
    return {"done": done.get(batch.state, "requested"), "batch": batch.id}


def _notice(params: Mapping[str, str]) -> str | None:
    """The sentence for ``?done=``, naming the revision or batch acted on."""
    template = DONE.get(params.get("done", ""))
    if template is None:
        return None
    channel = params.get("channel", "")
    fields = {
        "channel": channel if CHANNEL_NAME.fullmatch(channel) else "?",
        "number": _number(params.get("number", "")),
        "batch": _number(params.get("batch", "")),
    }
    return template.format(**fields)


def _number(text: str) -> str:
    return text if text.isdigit() and len(text) < 12 else "?"


def _status(exc: Exception) -> int:
    if isinstance(exc, governance.FourEyesViolation | governance.RoleRequired):
        return 403
    if isinstance(exc, governance.NotFound):
        return 404
    if isinstance(exc, governance.InvalidRevision | governance.MissingReason):
        return 422
    return 409


def _current_text(engine: Engine, channel: str) -> str:
    """The text to start editing from: the running revision, else the channel file."""
    if channel not in engine.channels:
        return ""
    stored = running_texts(engine.store).get(channel)
    if stored is not None:
        return stored.yaml
    path = channel_file(engine.config.channels, channel)
    return path.read_text(encoding="utf-8") if path.is_file() else ""
