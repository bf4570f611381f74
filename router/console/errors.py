"""Console error pages: a refusal or a missing page shown in the console's layout.

FastAPI answers ``HTTPException`` and form validation errors with JSON, which is right
for ``/api`` and scripts but leaves a person in the console looking at ``{"detail": ...}``
with no way back. Requests for console pages get an HTML page with the reason and the
navigation instead; ``/fhir`` and ``/proxy`` get FHIR OperationOutcomes
(router/api/fhir_errors.py); every other path keeps FastAPI's JSON answers.

An unexpected exception is answered the same way (JSON, or the page), never with
Starlette's ``text/plain`` 500 and never with the traceback, which the server logs.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from router.api import fhir_errors
from router.api.allow import allowed_methods
from router.api.security import ConsoleForbidden, authenticator, csrf_token
from router.console.templating import render

# Paths that are not console pages: the JSON API, protocol endpoints, probes and docs.
NOT_CONSOLE = ("/api/", "/fhir/", "/proxy/", "/metrics", "/health", "/docs", "/openapi.json")


def is_console_path(path: str) -> bool:
    return not any(path == p.rstrip("/") or path.startswith(p) for p in NOT_CONSOLE)


async def error_page(request: Request, status_code: int, detail: str) -> Response:
    """The error in the console layout, with the navigation when a session is signed in."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        principal = await authenticator(request).by_session(request)
    context = {
        "principal": principal,
        "csrf": csrf_token(request),
        "status_code": status_code,
        "phrase": HTTPStatus(status_code).phrase,
        "detail": detail,
    }
    return render(request, "error.html", context, status_code=status_code)


def _problems(exc: RequestValidationError) -> str:
    """Which form fields were missing or wrong, in words (never the submitted values)."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ())[1:]) or "request"
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return "The form was not complete: " + "; ".join(parts) + "."


def install(app: FastAPI) -> None:
    """Route console errors to :func:`error_page` and FHIR ones to OperationOutcomes; leave
    the API's JSON errors alone."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if fhir_errors.is_fhir_path(request.url.path):
            return await fhir_errors.http_error(request, exc)
        if not is_console_path(request.url.path):
            if exc.status_code == 405:
                allow = allowed_methods(request.app, request.scope["path"])
                exc = HTTPException(405, exc.detail, headers={"Allow": allow})
            return await http_exception_handler(request, exc)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        detail = detail[:1].upper() + detail[1:]
        return await error_page(request, exc.status_code, detail)

    async def invalid_form(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if fhir_errors.is_fhir_path(request.url.path):
            return await fhir_errors.invalid_request(request, exc)
        if not is_console_path(request.url.path):
            return await request_validation_exception_handler(request, exc)
        return await error_page(request, 400, _problems(exc))

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConsoleForbidden)
        return await error_page(request, 403, exc.detail)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette re-raises ``exc`` once this is sent, so uvicorn logs its traceback.
        if fhir_errors.is_fhir_path(request.url.path):
            return fhir_errors.unexpected(request)
        if not is_console_path(request.url.path):
            return JSONResponse({"detail": "internal error: see the engine's log"}, 500)
        return await error_page(request, 500, "Something went wrong: see the engine's log.")

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_form)
    app.add_exception_handler(ConsoleForbidden, forbidden)
