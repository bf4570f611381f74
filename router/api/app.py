"""The engine's FastAPI application: ``/health`` and the JSON API under ``/api``."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse
from sqlalchemy import text

from router import audit
from router.api import routes
from router.api.auth import require_token
from router.api.channels import channel_routes
from router.store.queries import MessageFilter, find_message_id, message_detail, search

if TYPE_CHECKING:
    from router.engine import Engine


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="tie", version="0.1.0", docs_url="/docs", redoc_url=None)
    store = engine.store

    @app.get("/health", tags=["operations"])
    async def health() -> JSONResponse:
        """Healthy when the store answers and every listener is up."""
        try:
            await asyncio.to_thread(_ping, store)
            store_ok = True
        except Exception:
            store_ok = False
        ok = store_ok and engine.listening
        body = {
            "status": "ok" if ok else "unavailable",
            "store": store_ok,
            "listeners": engine.listening,
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/api/messages", tags=["messages"])
    async def list_messages(
        _: str = Depends(require_token),
        channel: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        type: str | None = Query(default=None, description="MSH-9, e.g. ORU^R01 or ORU"),
        control_id: str | None = None,
        key: str | None = Query(default=None, description="a correlation key value"),
        text: str | None = None,
        before: int | None = Query(
            default=None, description="cursor: the last id of the previous page"
        ),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> dict[str, Any]:
        f = MessageFilter(
            channel=channel,
            status=status,
            since=since,
            until=until,
            message_type=type,
            control_id=control_id,
            key=key,
            text=text,
            before_id=before,
            limit=limit,
        )
        rows = await asyncio.to_thread(_search, store, f)
        return {
            "messages": rows,
            "next": rows[-1]["id"] if len(rows) == limit else None,
        }

    @app.get("/api/messages/{ref}", tags=["messages"])
    async def get_message(ref: str, actor: str = Depends(require_token)) -> dict[str, Any]:
        """The message with its content; every call is an audited view."""
        detail = await asyncio.to_thread(_detail, store, ref, actor)
        if detail is None:
            raise HTTPException(404, f"no message {ref}")
        return _jsonable(detail)

    routes.mount(app, engine)
    app.include_router(channel_routes(engine))
    return app


def _ping(store: Any) -> None:
    with store.read() as conn:
        conn.execute(text("SELECT 1"))


def _search(store: Any, f: MessageFilter) -> list[dict[str, Any]]:
    with store.read() as conn:
        return search(conn, f)


def _detail(store: Any, ref: str, actor: str) -> dict[str, Any] | None:
    with store.begin() as conn:
        message_id = find_message_id(conn, ref)
        if message_id is None:
            return None
        detail = message_detail(conn, message_id, store.blobs)
        audit.append(conn, actor, "view", f"urn:tie:message:{detail['uuid']}", {"via": "api"})
        return detail


def _jsonable(value: Any) -> Any:
    """Bytes become text when they are UTF-8, else base64, so HL7 and binary both survive."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value
