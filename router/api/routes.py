"""The gateway's routes on the engine's one FastAPI app: directory API, FHIR endpoints, proxy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from router.api.conversations import conversations_router
from router.api.endpoints import endpoints_router
from router.api.errors import API_ERRORS
from router.api.fhir import FhirRefusal, fhir_router, refused
from router.api.gateway_asgi import GatewayRoutes

if TYPE_CHECKING:
    from router.engine import Engine


def mount(app: FastAPI, engine: Engine) -> None:
    app.include_router(endpoints_router(engine), responses=API_ERRORS)
    app.include_router(fhir_router(engine))
    app.add_exception_handler(FhirRefusal, refused)
    app.include_router(conversations_router(engine), responses=API_ERRORS)
    app.add_middleware(GatewayRoutes, engine=engine)
