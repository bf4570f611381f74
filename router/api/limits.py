"""A bound on request bodies for the JSON API and the console.

FastAPI reads and parses a route's whole body before its dependencies run, so without a
bound an anonymous caller could make the engine hold any amount in memory before it is
answered 401. A body over ``MAX_BODY`` is refused with 413 as soon as that is known: at
once from its Content-Length, else when the chunks read pass it. The gateway's FHIR and
proxy endpoints answer before this (``GatewayRoutes``) with their own ``max_body``; the
registry's routes under ``/fhir`` get this limit, refused with an OperationOutcome.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

from router.api.fhir_errors import is_fhir_path
from router.api.gateway_asgi import (
    App,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    read_body,
    respond,
    respond_fhir,
)
from router.fhir.intake import rejected_answer
from router.fhir.outcome import reject

# The largest legitimate bodies: a bulk replay of 10,000 refs (about 0.6 MB), and a channel
# file (256 KiB of text: up to 1.5 MB once JSON escapes it, 0.8 MB form-encoded).
MAX_BODY = 2 * 1024 * 1024


class BodyLimit:
    """Pure ASGI middleware: a body of at most ``limit`` bytes goes on, read; else 413."""

    def __init__(self, app: App, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if "content-length" not in headers and "transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # HTTP/1.1: no body at all
            return
        try:
            body = await read_body(receive, headers, self.limit)
        except BodyTooLarge:
            text = f"the body is larger than {self.limit} bytes"
            if is_fhir_path(scope["path"]):
                answer = rejected_answer(reject(413, "too-costly", text), headers)
                answer.headers["connection"] = "close"
                await respond_fhir(send, answer)
                return
            detail = json.dumps({"detail": text})
            kind = [("content-type", "application/json"), ("connection", "close")]
            await respond(send, 413, detail.encode(), kind)
            return
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. http.disconnect, for a streaming response
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
