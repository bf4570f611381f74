"""The ServiceRequest registry's FHIR endpoints, ``GET /fhir/<channel>/ServiceRequest``.

The registry holds patient data: a token or session with the support role is required,
and every answer is an audited ``view`` (DESIGN.md §7), written in the transaction that
reads it: a search names the ServiceRequests it returned, even none. A refusal (401, 403)
is an OperationOutcome, as a FHIR client expects, not the JSON API's ``{"detail": ...}``.
(The POST endpoints of FHIR channels are plain ASGI, in router/api/gateway_asgi.py.)
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from router import audit
from router.api.security import Principal, require_role
from router.fhir import registry, search_params
from router.fhir.intake import Answer, rejected_answer
from router.fhir.negotiation import unacceptable
from router.fhir.outcome import Rejected, reject
from router.store.queries import parse_id

if TYPE_CHECKING:
    from router.engine import Engine

# Search parameter: registry.search's argument.
SEARCHED = {"identifier": "identifier", "patient:identifier": "patient", "status": "status"}
# Result parameters and their defaults: a page's size, and how many matches come before it
# (the next and previous links carry it; a client need not build it).
PAGING = {"_count": "50", "_offset": "0"}
SORTS = ("-_lastUpdated", "_lastUpdated")  # newest first, the default; or oldest first
TOTALS = ("none", "estimate", "accurate")  # whichever is asked for, total is accurate
# The FHIR issue type of a refusal: not signed in, or not allowed.
REFUSAL_CODES = {401: "login", 403: "forbidden"}


class FhirRefusal(HTTPException):
    """A FHIR route's 401 or 403 (from ``require_role``): answered by :func:`refused`."""


async def refused(request: Request, exc: Exception) -> Response:
    """The refusal as an OperationOutcome; a 401 keeps its ``WWW-Authenticate``."""
    assert isinstance(exc, FhirRefusal)
    code = REFUSAL_CODES.get(exc.status_code, "security")
    answer = rejected_answer(reject(exc.status_code, code, str(exc.detail)), request.headers)
    answer.headers.update(exc.headers or {})
    return to_response(answer)


support = require_role("support", refusal=FhirRefusal)


def to_response(answer: Answer) -> Response:
    return Response(
        answer.body, answer.status, headers=answer.headers, media_type=answer.media_type
    )


def fhir_router(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/fhir", tags=["FHIR"])

    def unknown(request: Request, what: str) -> Response:
        return to_response(rejected_answer(reject(404, "not-found", what), request.headers))

    def registry_channel(channel: str) -> bool:
        compiled = engine.channels.get(channel)
        return compiled is not None and compiled.config.source.http is not None

    def not_json(request: Request, channel: str) -> Response | None:
        """406 for a client that asks only for a format other than the channel's FHIR JSON."""
        source = engine.channels[channel].config.source.http
        assert source is not None
        exc = unacceptable(request.headers.get("accept", ""), request.url.query, source.fhir)
        return None if exc is None else to_response(rejected_answer(exc, request.headers))

    def fhir_json(resource: dict[str, Any], status: int = 200) -> Response:
        return Response(json.dumps(resource), status, media_type="application/fhir+json")

    @router.get("/{channel}/ServiceRequest")
    async def search_service_requests(
        channel: str, request: Request, principal: Principal = Depends(support)
    ) -> Response:
        """The latest ServiceRequests by ``identifier``, ``patient:identifier`` and ``status``."""
        if not registry_channel(channel):
            return unknown(request, f"no FHIR channel named {channel!r}")
        if (refusal := not_json(request, channel)) is not None:
            return refusal
        params = request.query_params
        try:
            strict = search_params.strict(request.headers.get("prefer"))
            supported = (*SEARCHED, *PAGING, "_sort", "_total", "_format")
            skipped = search_params.ignored(params, supported, strict=strict)
        except Rejected as exc:
            return to_response(rejected_answer(exc, request.headers))
        paging = {}
        for name, default in PAGING.items():
            text = params.get(name, default)
            paging[name] = 0 if text == "0" else parse_id(text)  # _count=0: only the total
            if paging[name] is None:
                exc = reject(400, "invalid", f"{name} is a number from 0", name)
                return to_response(rejected_answer(exc, request.headers))
        count, offset = min(paging["_count"], registry.MAX_RESULTS), paging["_offset"]
        if params.get("_total", "accurate") not in TOTALS:
            exc = reject(400, "invalid", f"_total is one of {', '.join(TOTALS)}", "_total")
            return to_response(rejected_answer(exc, request.headers))
        sort = params.get("_sort", SORTS[0])
        if sort not in SORTS:
            exc = reject(400, "not-supported", f"_sort is one of {', '.join(SORTS)}", "_sort")
            return to_response(rejected_answer(exc, request.headers))
        try:
            criteria = {
                field: search_params.tokens(name, params.getlist(name))
                for name, field in SEARCHED.items()
            }
        except Rejected as exc:
            return to_response(rejected_answer(exc, request.headers))

        def find() -> tuple[list[dict[str, Any]], int]:
            with engine.store.begin() as conn:
                rows, total = registry.search(
                    conn,
                    channel,
                    limit=count,
                    offset=offset,
                    oldest_first=sort == "_lastUpdated",
                    **criteria,
                )
                found = [row["resource_id"] for row in rows]
                target = f"fhir:{channel}/ServiceRequest"
                audit.append(conn, principal.name, "view", target, {"via": "api", "found": found})
                return rows, total

        await engine.gateway.recorder.written()  # exchanges answered before this search
        rows, total = await asyncio.to_thread(find)
        base = str(request.base_url).rstrip("/") + f"/fhir/{channel}"
        used = [(name, value) for name, value in params.multi_items() if name not in skipped]
        criteria_used = [(name, value) for name, value in used if name not in PAGING]

        def page(at: int) -> str:
            query = [*criteria_used, ("_count", str(count)), ("_offset", str(at))]
            return str(request.url.replace(query=urlencode(query)))

        links = {"self": str(request.url.replace(query=urlencode(used)))}
        if count and offset + count < total:
            links["next"] = page(offset + count)
        if count and offset:
            links["previous"] = page(max(offset - count, 0))
        return fhir_json(registry.searchset(rows, total, base, links, skipped))

    @router.get("/{channel}/ServiceRequest/{resource_id}")
    async def read_service_request(
        channel: str,
        resource_id: str,
        request: Request,
        principal: Principal = Depends(support),
    ) -> Response:
        if not registry_channel(channel):
            return unknown(request, f"no FHIR channel named {channel!r}")
        if (refusal := not_json(request, channel)) is not None:
            return refusal

        def find() -> dict[str, Any] | None:
            with engine.store.begin() as conn:
                row = registry.read(conn, channel, resource_id)
                if row is not None:
                    target = f"fhir:{channel}/ServiceRequest/{resource_id}"
                    audit.append(conn, principal.name, "view", target, {"via": "api"})
                return row

        await engine.gateway.recorder.written()
        row = await asyncio.to_thread(find)
        if row is None:
            return unknown(request, f"no ServiceRequest/{resource_id} in channel {channel}")
        return fhir_json(registry.as_resource(row))

    return router
