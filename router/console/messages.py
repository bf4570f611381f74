"""Message browser and message detail pages.

Anyone signed in sees metadata; content (raw message, parsed fields, payloads,
responses) needs the ``support`` role, and every view of it is an audit event
written in the same transaction that reads it.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Connection, select

from router import audit
from router.api.params import IdPath
from router.api.security import Principal, csrf_token
from router.console.access import Support, Viewer
from router.console.content import view
from router.console.search import Search, page, read_search
from router.console.templating import SECURITY_HEADERS, render
from router.downloads import delivery_response, message_response
from router.store.queries import DELIVERY_STATUSES, MESSAGE_STATUSES
from router.store.schema import PENDING, channel_state, deliveries, messages

if TYPE_CHECKING:
    from router.engine import Engine

DONE = {"reprocessed", "resent", "cancelled"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def message_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store

    def listing(search: Search, principal: Principal) -> list[dict[str, Any]]:
        """One page of the search; a search of content is audited in its transaction."""
        if search.problems:
            return []
        text = search.filter.text
        if not text:
            with store.read() as conn:
                return page(conn, search)
        with store.begin() as conn:
            rows = page(conn, search)
            found = [row["uuid"] for row in rows]
            audit.searched_content(conn, principal.name, text, found, via="console")
            return rows

    def searched(request: Request, principal: Principal) -> Search:
        """The search asked for; only ``support`` may search content (text)."""
        return read_search(request.query_params, content=principal.has("support"))

    @routes.get("/messages", response_class=HTMLResponse)
    async def browser(request: Request, principal: Viewer) -> HTMLResponse:
        search = searched(request, principal)
        rows = await asyncio.to_thread(listing, search, principal)
        return render(
            request,
            "messages.html",
            {
                "principal": principal,
                "csrf": csrf_token(request),
                "search": search,
                "rows": rows,
                "channels": sorted(engine.channels),
                "statuses": MESSAGE_STATUSES,
                "delivery_statuses": DELIVERY_STATUSES,
            },
        )

    @routes.get("/messages/rows", response_class=HTMLResponse)
    async def more_rows(request: Request, principal: Viewer) -> HTMLResponse:
        """The next page of the browser's table, for htmx to append."""
        search = searched(request, principal)
        rows = await asyncio.to_thread(listing, search, principal)
        return render(
            request, "_message_rows.html", {"principal": principal, "search": search, "rows": rows}
        )

    @routes.get("/messages/{ref}", response_class=HTMLResponse)
    async def detail(ref: str, request: Request, principal: Viewer) -> HTMLResponse:
        content = principal.has("support")

        def load() -> dict[str, Any] | None:
            # Only a view of content writes (its audit event, in the transaction that reads).
            with store.begin() if content else store.read() as conn:
                reader = principal.name if content else None
                found = audit.viewed_message(
                    conn, ref[:80], store.blobs, actor=reader, via="console"
                )
                if found is not None:
                    found["paused_by"] = _paused_by(conn, found["channel"])
                return found

        found = await asyncio.to_thread(load)
        if found is None:
            raise HTTPException(404, f"no message {ref}")
        context: dict[str, Any] = {
            "principal": principal,
            "csrf": csrf_token(request),
            "m": found,
            "content": content,
            "polling": _polling(found["status"], found["deliveries"]),
            "done": _known(request.query_params.get("done"), DONE),
            "copy": _uuid(request.query_params.get("copy", "")),
        }
        if content:
            context["raw"] = view(found["raw"], found["content_type"])
            context["payloads"] = [
                (x, view(x["payload"], x["content_type"])) for x in found["deliveries"]
            ]
            for x in found["deliveries"]:
                for a in x["attempt_log"]:  # an ACK in the lab's own codec, like the message
                    a["shown_response"] = view(a["response"], "").text if a["response"] else ""
        return render(request, "message.html", context)

    @routes.get("/messages/{ref}/raw", response_class=Response)
    async def download_message(ref: str, principal: Support) -> Response:
        """The whole content, which the page shows the first 64 KiB of; audited."""
        return await message_response(store, ref, actor=principal.name, via="console")

    @routes.get("/deliveries/{delivery_id}/payload", response_class=Response)
    async def download_delivery(delivery_id: IdPath, principal: Support) -> Response:
        """A delivery's whole payload; audited."""
        return await delivery_response(store, delivery_id, actor=principal.name, via="console")

    @routes.get("/messages/{message_id}/deliveries", response_class=HTMLResponse)
    async def delivery_rows(
        message_id: IdPath, request: Request, principal: Viewer
    ) -> HTMLResponse:
        """The deliveries' metadata, polled by the detail page while any is on its way or the
        message waits to be processed. Once the message's status is no longer the one the
        page shows (``shown``), htmx reloads the whole page: its status, notices and payloads
        have changed too, not only its deliveries."""

        def load() -> tuple[Any, list[dict[str, Any]]]:
            m = messages.c
            with store.read() as conn:
                found = conn.execute(
                    select(m.status, m.source).where(m.id == message_id)
                ).one_or_none()
                return found, _delivery_rows(conn, message_id)

        found, rows = await asyncio.to_thread(load)
        if found is None:
            raise HTTPException(404, f"no message {message_id}")
        status, source = found.status, json.loads(found.source or "{}")
        shown = request.query_params.get("shown")
        if shown is not None and shown != status:
            return HTMLResponse("", headers={**SECURITY_HEADERS, "HX-Refresh": "true"})
        return render(
            request,
            "_deliveries.html",
            {
                "principal": principal,
                "csrf": csrf_token(request),
                "m": {"id": message_id, "status": status, "source": source, "deliveries": rows},
                "polling": _polling(status, rows),
            },
        )

    return routes


def _delivery_rows(conn: Connection, message_id: int) -> list[dict[str, Any]]:
    """The message's deliveries as the page's table shows them, each with the copies it was
    resent as, as the page has them (``message_detail``); never their payloads, which
    can be megabytes, read every 2 seconds."""
    shown = [c for c in deliveries.c if c.name != "payload"]
    query = select(*shown).where(deliveries.c.message_id == message_id).order_by(deliveries.c.id)
    rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        row["resent_as"] = [x["id"] for x in rows if x["resent_from"] == row["id"]]
    return rows


def _paused_by(conn: Connection, channel: str) -> str | None:
    """Who paused the channel, when it is paused: its messages wait unprocessed, which the
    message page must say, or a ``received`` message (or a reprocessed copy) looks stuck."""
    c = channel_state.c
    row = conn.execute(select(c.paused, c.updated_by).where(c.channel == channel)).first()
    return (row.updated_by or "someone") if row is not None and row.paused else None


def _known(value: str | None, allowed: set[str]) -> str | None:
    """A notice is picked from a fixed set: a link cannot make the page say anything else."""
    return value if value in allowed else None


def _uuid(value: str) -> str:
    return value if UUID.fullmatch(value) else ""


def _polling(status: str, rows: list[dict[str, Any]]) -> bool:
    """Whether the page follows the message: it waits to be processed (a paused channel's
    message until it is resumed), or a delivery of it is on its way."""
    return status == "received" or any(r["status"] in PENDING for r in rows)
