"""The engine's one FastAPI application: ``/health``, ``/metrics``, the JSON API, the console.

Every route but the few marked ``public_route`` declares ``require_role`` (API) or
``require_console`` (console pages); tests/integration/test_route_auth.py walks the
route table to prove it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from router.api import routes, store_outage
from router.api.approvals import approval_routes
from router.api.audit import audit_routes
from router.api.channels import channel_routes
from router.api.errors import API_ERRORS
from router.api.head import HeadAsGet
from router.api.limits import BodyLimit
from router.api.messages import message_routes
from router.api.metrics import metrics_routes
from router.api.own_password import own_password_routes
from router.api.security import install, public_route
from router.api.users import user_routes
from router.channel_health import channel_health, paused_channels
from router.console import routes as console
from router.console.login import login_routes

if TYPE_CHECKING:
    from router.engine import Engine

# A load balancer's probe waits a few seconds: a store that takes longer to answer
# ``SELECT 1`` (PostgreSQL unreachable, its packets dropped) is down, said before it gives up.
HEALTH_TIMEOUT = 2.0


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="tie", version="0.1.0", docs_url="/docs", redoc_url=None)
    store = engine.store
    install(app, store, engine.config.auth)

    @app.get("/health", tags=["operations"])
    @public_route
    async def health() -> JSONResponse:
        """Healthy when the store answers and takes writes (its last commit did not fail),
        every listener is up, and the group-commit writer, the processor and every dispatch
        worker run: without them messages are refused (the writer), or still acknowledged
        but never processed or sent (public, for load balancers). ``channels`` says what
        each channel is and which revision it runs; ``degraded``: one is left out, failed
        to start or runs an older revision than its newest deployed one (a fallback), none
        of which alone makes a governed node unhealthy (router/channel_health.py). Why is
        for the signed-in dashboard: a reason names files, hosts and code digests."""
        paused: frozenset[str] = frozenset()
        try:
            paused = await asyncio.wait_for(asyncio.to_thread(_ping, store), HEALTH_TIMEOUT)
            store_ok = not engine.writer.failing
        except Exception:  # a store that refuses, fails or does not answer in time
            store_ok = False
        parts = {
            "store": store_ok,
            "listeners": engine.listening,
            "writer": engine.writer.alive,
            "processor": engine.processor.alive,
            "dispatcher": engine.dispatcher.alive,
        }
        ok = all(parts.values())
        channels = channel_health(engine, paused)
        body = {
            "status": "ok" if ok else "unavailable",
            **parts,
            "degraded": any(c.degraded for c in channels.values()),
            "channels": {name: c.public() for name, c in channels.items()},
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    app.add_middleware(BodyLimit)  # inside the gateway's routes (added next), which have their own
    app.add_middleware(HeadAsGet)
    routes.mount(app, engine)
    for router in (
        message_routes(engine),
        approval_routes(engine),
        channel_routes(engine),
        audit_routes(engine),
        user_routes(engine),
        own_password_routes(engine),
        metrics_routes(engine),
    ):
        app.include_router(router, responses=API_ERRORS)
    app.include_router(login_routes(engine))
    console.mount(app, engine)
    store_outage.install(app)
    return app


def _ping(store: Any) -> frozenset[str]:
    """The channels paused in the store: one indexed read, which also says it answers."""
    with store.read() as conn:
        return paused_channels(conn)
