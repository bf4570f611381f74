"""Reprocess, resend and cancel from the console: one message or delivery, or in bulk by a
search.

Every action needs a reason and offers a dry run first (``router.replay``'s plans);
the bulk dry run lists the exact items, and confirming acts on those items only,
so what was reviewed is what happens. One audit event per item (router.replay), in
batches of one transaction each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from router import cancel, replay
from router.api.params import IdPath
from router.api.security import Principal, csrf_token
from router.console.access import Support
from router.console.bulk_outcome import copies_made, decode_ids, encode_ids, outcome
from router.console.form_once import once
from router.console.search import Search, find, read_search
from router.console.templating import render
from router.store.database import Store
from router.store.queries import parse_id
from router.store.schema import deliveries, messages

if TYPE_CHECKING:
    from router.engine import Engine

MAX_BULK = 1000  # items one console action may touch; the CLI does larger runs
MAX_REASON = 1000
ACTIONS = ("resend", "reprocess", "cancel")
Plan = Callable[[Store, list[int]], list[replay.ReplayResult]]
PLANS: dict[str, Plan] = {
    "resend": replay.plan_resend,
    "reprocess": replay.plan_reprocess,
    "cancel": cancel.plan_cancel,
}


def replay_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store

    async def preview(
        request: Request, principal: Principal, plan_of: Plan, item: int
    ) -> HTMLResponse:
        """The dry run of one reprocess or resend, shown before the reason is asked for."""
        plan = await asyncio.to_thread(plan_of, store, [item])
        return render(request, "_preview.html", {"principal": principal, "plan": plan})

    @routes.post("/messages/{message_id}/reprocess/preview", response_class=HTMLResponse)
    async def reprocess_preview(
        message_id: IdPath, request: Request, principal: Support
    ) -> HTMLResponse:
        return await preview(request, principal, replay.plan_reprocess, message_id)

    @routes.post("/messages/{message_id}/reprocess")
    async def reprocess(
        message_id: IdPath,
        request: Request,
        principal: Support,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        async def act() -> Response:
            result = await _act(
                replay.reprocess, store, message_id, reason=reason, actor=principal.name
            )
            engine.processor.wake()
            return RedirectResponse(
                f"/messages/{message_id}?done=reprocessed&copy={result.copy}", status_code=303
            )

        return await once(request, act)

    @routes.post("/deliveries/{delivery_id}/resend/preview", response_class=HTMLResponse)
    async def resend_preview(
        delivery_id: IdPath, request: Request, principal: Support
    ) -> HTMLResponse:
        return await preview(request, principal, replay.plan_resend, delivery_id)

    @routes.post("/deliveries/{delivery_id}/resend")
    async def resend(
        delivery_id: IdPath,
        request: Request,
        principal: Support,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        async def act() -> Response:
            result = await _act(
                replay.resend, store, delivery_id, reason=reason, actor=principal.name
            )
            assert result.copy is not None
            message_id = await asyncio.to_thread(_notify_copy, store, engine, int(result.copy))
            return RedirectResponse(f"/messages/{message_id}?done=resent", status_code=303)

        return await once(request, act)

    @routes.post("/deliveries/{delivery_id}/cancel/preview", response_class=HTMLResponse)
    async def cancel_preview(
        delivery_id: IdPath, request: Request, principal: Support
    ) -> HTMLResponse:
        return await preview(request, principal, cancel.plan_cancel, delivery_id)

    @routes.post("/deliveries/{delivery_id}/cancel")
    async def cancel_one(
        delivery_id: IdPath,
        request: Request,
        principal: Support,
        reason: str = Form(default="", max_length=MAX_REASON),
    ) -> Response:
        async def act() -> Response:
            result = await _act(
                cancel.cancel, store, delivery_id, reason=reason, actor=principal.name
            )
            message_id = await asyncio.to_thread(_message_of, store, int(result.original))
            return RedirectResponse(f"/messages/{message_id}?done=cancelled", status_code=303)

        return await once(request, act)

    async def dry_run(
        request: Request,
        principal: Principal,
        action: str,
        ids: list[int],
        search: Search,
        *,
        more: bool = False,
        left_out: int = 0,
        problem: str | None = None,
        reason: str = "",
    ) -> HTMLResponse:
        """The bulk dry run of exactly ``ids``; shown again, with what was typed, when the
        confirmation is refused."""
        plan = await asyncio.to_thread(PLANS[action], store, ids)
        return render(
            request,
            "bulk.html",
            {
                "principal": principal,
                "csrf": csrf_token(request),
                "action": action,
                "plan": plan,
                "ids": ids,
                "more": more,
                "left_out": left_out,
                "synchronous_left_out": replay.SYNCHRONOUS_LEFT_OUT,
                "limit": MAX_BULK,
                "search": search,
                "problem": problem,
                "reason": reason,
            },
            status_code=422 if problem else 200,
        )

    @routes.post("/messages/bulk/preview", response_class=HTMLResponse)
    async def bulk_preview(request: Request, principal: Support) -> Response:
        form = await request.form()
        action = str(form.get("action", ""))
        if action not in ACTIONS:
            raise HTTPException(400, "unknown action")
        search = read_search(form, limit=MAX_BULK + 1)
        if search.problems or not search.given:
            raise HTTPException(400, "give a valid search first")
        ids, left_out = await asyncio.to_thread(_bulk_targets, store, search, action)
        return await dry_run(
            request,
            principal,
            action,
            ids[:MAX_BULK],
            search,
            more=len(ids) > MAX_BULK,
            left_out=left_out,
        )

    @routes.post("/messages/bulk", response_class=HTMLResponse)
    async def bulk(request: Request, principal: Support) -> Response:
        form = await request.form()
        action = str(form.get("action", ""))
        reason = str(form.get("reason", ""))[:MAX_REASON]
        listed = (parse_id(v) for v in str(form.get("ids", "")).split(","))
        ids = [i for i in listed if i is not None][:MAX_BULK]
        search = read_search(form)
        return await once(request, lambda: confirm(request, principal, action, ids, search, reason))

    async def confirm(
        request: Request,
        principal: Principal,
        action: str,
        ids: list[int],
        search: Search,
        reason: str,
    ) -> Response:
        """Act on exactly the items the dry run listed, once per form (form_once.py)."""
        if action not in ACTIONS:
            raise HTTPException(400, "unknown action")
        if not reason.strip():
            problem = "Give a reason: it is kept in the audit log with each item."
            return await dry_run(
                request, principal, action, ids, search, problem=problem, reason=reason
            )

        def run() -> list[Any]:
            """Skips what cannot be done now (gone since the dry run, no longer finished, or
            resent since)."""
            done = []
            for batch in replay.Pace(0).batches(ids):
                if action == "resend":
                    done += replay.resend_many(
                        store,
                        batch,
                        reason=reason,
                        actor=principal.name,
                        skip_refused=True,
                        again=False,  # the failed ones listed: a second confirm resends none
                    )
                elif action == "cancel":
                    done += cancel.cancel_many(
                        store, batch, reason=reason, actor=principal.name, skip_refused=True
                    )
                else:
                    done += replay.reprocess_many(
                        store, batch, reason=reason, actor=principal.name, skip_refused=True
                    )
            return done

        done = await asyncio.to_thread(run)
        await asyncio.to_thread(engine.replayed, action, done)
        copies = await asyncio.to_thread(copies_made, store, action, done)
        # Post/redirect/get: reloading the result must show it again, never act again.
        query = search.query_string(action=action, copies=encode_ids(copies))
        return RedirectResponse(f"/messages/bulk/done?{query}", status_code=303)

    @routes.get("/messages/bulk/done", response_class=HTMLResponse)
    async def bulk_done(request: Request, principal: Support) -> HTMLResponse:
        """What a bulk action did: its copies, read back from the store."""
        action = request.query_params.get("action", "")
        if action not in ACTIONS:
            raise HTTPException(400, "unknown action")
        copies = decode_ids(request.query_params.get("copies", ""), MAX_BULK)
        done, reasons = await asyncio.to_thread(outcome, store, action, copies)
        return render(
            request,
            "bulk.html",
            {
                "principal": principal,
                "csrf": csrf_token(request),
                "action": action,
                "done": done,
                "reasons": reasons,
                "search": read_search(request.query_params),
            },
        )

    return routes


async def _act(act: Any, store: Any, item: int, *, reason: str, actor: str) -> replay.ReplayResult:
    try:
        return await asyncio.to_thread(act, store, item, reason=reason, actor=actor)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except replay.NotFinished as exc:
        raise HTTPException(409, str(exc)) from exc


def _notify_copy(store: Any, engine: Engine, copy_id: int) -> int:
    """Wake the dispatcher for a resent copy; the message it belongs to (the original's),
    read in the same query."""
    d = deliveries.c
    with store.read() as conn:
        row = conn.execute(
            select(d.channel, d.destination, d.message_id).where(d.id == copy_id)
        ).one()
    engine.dispatcher.notify({(row.channel, row.destination)})
    return int(row.message_id)


def _message_of(store: Any, delivery_id: int) -> int:
    with store.read() as conn:
        query = select(deliveries.c.message_id).where(deliveries.c.id == delivery_id)
        return int(conn.execute(query).scalar_one())


def _bulk_targets(store: Any, search: Any, action: str) -> tuple[list[int], int]:
    """Messages matching the search (reprocess), their failed deliveries not yet resent
    (resend), or those still to be sent (cancel), with the count of synchronous exchanges'
    left out (the sender repeats those)."""
    with store.read() as conn:
        message_ids = sorted(row.id for row in find(conn, search, (messages.c.id,)))
        if action == "reprocess" or not message_ids:
            return message_ids, 0
        if action == "cancel":
            return cancel.waiting_of(conn, message_ids)[: MAX_BULK + 1], 0
        found = replay.deliveries_of(conn, message_ids)
        return found.ids[: MAX_BULK + 1], found.synchronous
