"""``/api/endpoints``: read and change the endpoint directory (viewer to read, engineer to change).

A change is written with an audit event and reaches this engine's lookups at once;
other nodes see it within the directory's refresh interval.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field

from router.api.params import IdPath
from router.api.security import Principal, require_role
from router.directory import (
    get_endpoint,
    list_endpoints,
    make_endpoint,
    parse_key,
    put_endpoint,
    remove_endpoint_id,
)

if TYPE_CHECKING:
    from router.engine import Engine


Transport = Literal["fhir", "mllp", "mesh"]


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="ods:<code>, dos:<id>, asid:<asid> or a FHIR system|value")
    interaction: str
    transport: Transport
    address: str = Field(description="FHIR base URL, MLLP host:port or MESH mailbox")
    scope: Literal["addressed", "all"] = "addressed"
    name: str = ""


def endpoints_router(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/api/endpoints", tags=["endpoint directory"])
    store = engine.store
    directory = engine.gateway.directory

    @router.get("")
    async def list_all(
        _: Principal = Depends(require_role("viewer")),
        key: str | None = None,
        interaction: str | None = None,
        transport: Transport | None = None,
    ) -> dict[str, Any]:
        """The directory's endpoints; a ``transport`` it has no name for is a 422, not an
        empty list that reads as "no such endpoint"."""
        parsed = _parse(key) if key else None

        def read() -> list[dict[str, Any]]:
            with store.read() as conn:
                return list_endpoints(
                    conn, key=parsed, interaction=interaction, transport=transport
                )

        return {"endpoints": _json(await asyncio.to_thread(read))}

    @router.get("/{endpoint_id}")
    async def get_one(
        endpoint_id: IdPath, _: Principal = Depends(require_role("viewer"))
    ) -> dict[str, Any]:
        def read() -> dict[str, Any] | None:
            with store.read() as conn:
                return get_endpoint(conn, endpoint_id)

        row = await asyncio.to_thread(read)
        if row is None:
            raise HTTPException(404, f"no endpoint {endpoint_id}")
        return _json(row)

    @router.post("", status_code=201)
    async def put(
        body: EndpointIn, actor: Principal = Depends(require_role("engineer"))
    ) -> dict[str, Any]:
        """Add an endpoint, or change the one with the same key, interaction and transport."""
        try:
            endpoint = make_endpoint(
                _parse(body.key),
                body.interaction,
                body.transport,
                body.address,
                scope=body.scope,
                name=body.name,
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc

        def write() -> dict[str, Any]:
            with store.begin() as conn:
                return put_endpoint(conn, endpoint, actor=actor.name)

        row = await asyncio.to_thread(write)
        await asyncio.to_thread(directory.refresh)
        return _json(row)

    @router.delete("/{endpoint_id}", status_code=204)
    async def remove(
        endpoint_id: IdPath, actor: Principal = Depends(require_role("engineer"))
    ) -> Response:
        def write() -> dict[str, Any] | None:
            with store.begin() as conn:
                return remove_endpoint_id(conn, endpoint_id, actor=actor.name)

        if await asyncio.to_thread(write) is None:
            raise HTTPException(404, f"no endpoint {endpoint_id}")
        await asyncio.to_thread(directory.refresh)
        return Response(status_code=204)

    return router


def _parse(key: str) -> Any:
    try:
        return parse_key(key)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def _json(value: Any) -> Any:
    if isinstance(value, list):
        return [_json(v) for v in value]
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in value.items()}
