"""The audit log page: filterable, newest first, cursor-paged, with a chain verification."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from router import audit
from router.api.security import csrf_token
from router.cli.filters import when
from router.console.access import AuditReader
from router.console.search import TIME_HINT
from router.console.templating import render
from router.store.queries import parse_id

if TYPE_CHECKING:
    from router.engine import Engine

PAGE = 50
FIELDS = ("actor", "action", "target", "since", "until")
# The log names who did what to which message: people accountable for actions read it.
READERS = ("support", "approver")


def audit_routes(engine: Engine) -> APIRouter:
    routes = APIRouter()
    store = engine.store

    @routes.get("/audit", response_class=HTMLResponse)
    async def log(request: Request, principal: AuditReader) -> HTMLResponse:
        values = {n: str(request.query_params.get(n) or "").strip()[:255] for n in FIELDS}
        before = str(request.query_params.get("before") or "")
        problems: list[str] = []
        rows: list[dict[str, Any]] = []
        moments: dict[str, datetime | None] = {}
        for name in ("since", "until"):
            try:
                moments[name] = when(values[name]) if values[name] else None
            except argparse.ArgumentTypeError as exc:
                problems.append(f"{name}: {exc}: {TIME_HINT}")
        if not problems:
            query = audit.EventFilter(
                values["actor"] or None,
                values["action"] or None,
                values["target"] or None,
                moments["since"],
                moments["until"],
                parse_id(before),
                PAGE,
            )
            rows = await asyncio.to_thread(_read, store, query)
        chosen = {k: v for k, v in values.items() if v}
        context: dict[str, Any] = {
            "principal": principal,
            "csrf": csrf_token(request),
            "values": values,
            "rows": rows,
            "problems": problems,
            "next": urlencode({**chosen, "before": rows[-1]["id"]}) if len(rows) == PAGE else "",
        }
        template = "_audit_rows.html" if request.headers.get("HX-Request") else "audit.html"
        return render(request, template, context)

    @routes.get("/audit/verify", response_class=HTMLResponse)
    async def verify(request: Request, principal: AuditReader) -> HTMLResponse:
        """Walk the whole chain (read only); name the first event that does not fit."""
        verdict = await asyncio.to_thread(audit.verify, store)
        return render(request, "_verdict.html", {"principal": principal, "verdict": verdict})

    return routes


def _read(store: Any, query: audit.EventFilter) -> list[dict[str, Any]]:
    with store.read() as conn:
        return audit.events(conn, query)
