"""HEAD answered as GET without its body, for every route but the FHIR and proxy ones.

HTTP requires HEAD wherever GET is served (RFC 9110 9.1), and monitors and load
balancers probe with it (``HEAD /health``); FastAPI routes declared with ``get`` answered
405. The route runs as for GET, with the same authentication and role checks, and only
its status and headers (Content-Length included) go out. ``/fhir`` and ``/proxy`` keep
their own answers (router/api/gateway_asgi.py).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from router.api.fhir_errors import is_fhir_path
from router.api.gateway_asgi import App, Receive, Scope, Send


class HeadAsGet:
    """Pure ASGI middleware: a HEAD request runs as GET; its body is not sent."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or is_fhir_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
