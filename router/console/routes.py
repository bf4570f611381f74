"""The console's routes, mounted at ``/`` on the engine's app, and its static files."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from router.console.approvals import approval_routes
from router.console.audit_log import audit_routes
from router.console.dashboard import dashboard_routes
from router.console.errors import install as install_error_pages
from router.console.jobs import job_routes
from router.console.messages import message_routes
from router.console.replays import replay_routes
from router.console.templating import STATIC
from router.console.users import user_routes

if TYPE_CHECKING:
    from router.engine import Engine


def console_routes(engine: Engine) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    parts = (dashboard_routes, message_routes, replay_routes, approval_routes, audit_routes)
    for part in (*parts, job_routes, user_routes):
        routes.include_router(part(engine))
    return routes


def mount(app: FastAPI, engine: Engine) -> None:
    """Every page needs a session (``require_console``); only ``/static`` is public."""
    app.include_router(console_routes(engine))
    install_error_pages(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
