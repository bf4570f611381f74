"""The errors FastAPI raises itself (a request it cannot validate, a failure) are
OperationOutcomes under /fhir and /proxy, and keep FastAPI's JSON under /api."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from router.console.errors import install


def _app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.get("/fhir/{channel}/count")
    async def count(channel: str, n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/api/count")
    async def api_count(n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/proxy/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    return app


def _get(path: str, **headers: str) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(_app(), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://tie") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(get())


def test_a_request_fastapi_cannot_validate_is_a_400_operation_outcome():
    answer = _get("/fhir/inbox/count?n=many", **{"X-Request-Id": "r-1"})
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/fhir+json"
    assert answer.headers["x-request-id"] == "r-1"
    [issue] = answer.json()["issue"]
    assert (issue["code"], issue["expression"]) == ("invalid", ["n"])
    assert issue["details"]["coding"][0]["code"] == "BAD_REQUEST"
    api = _get("/api/count?n=many")
    assert api.status_code == 422
    assert api.json()["detail"][0]["loc"] == ["query", "n"]


def test_an_unexpected_failure_is_a_500_operation_outcome_without_the_traceback():
    answer = _get("/proxy/boom")
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "application/fhir+json"
    [issue] = answer.json()["issue"]
    assert (issue["code"], issue["diagnostics"]) == (
        "exception",
        "internal error: see the engine's log",
    )
    assert "a bug" not in answer.text
