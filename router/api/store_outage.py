"""HTTP requests while the store cannot be reached: 503 with ``Retry-After``, not a 500.

Every authenticated request reads the store (its token or session), so while PostgreSQL
is down each console page, API call and Prometheus scrape raised ``OperationalError``:
a 500 ("see the engine's log") and a traceback of about a hundred lines each, some
400 lines a minute from one scraper alone. A store outage is not a bug: the answer is
503 with ``Retry-After`` (an OperationOutcome on ``/fhir`` and ``/proxy``, a page in the
console, JSON elsewhere) and one warning every few minutes while it lasts.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.responses import JSONResponse, Response

from router.api import fhir_errors
from router.console.errors import is_console_path
from router.console.templating import render
from router.outage_log import outage_reason
from router.repeat_log import RepeatLog

log = logging.getLogger(__name__)
RETRY_AFTER = {"Retry-After": "10"}
DETAIL = "the store is unavailable; try again shortly"


def install(app: FastAPI) -> None:
    warnings = RepeatLog(log)

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        warnings.warning("store", "answering HTTP requests 503: %s", outage_reason(exc))
        if fhir_errors.is_fhir_path(request.url.path):
            answer = fhir_errors.status_outcome(503, DETAIL, request.headers)
        elif is_console_path(request.url.path):
            context = {
                "principal": None,
                "csrf": None,
                "status_code": 503,
                "phrase": "Service Unavailable",
                "detail": DETAIL[:1].upper() + DETAIL[1:] + ".",
            }
            answer = render(request, "error.html", context, status_code=503)
        else:
            answer = JSONResponse({"detail": DETAIL}, 503)
        answer.headers.update(RETRY_AFTER)
        return answer

    for kind in (OperationalError, InterfaceError):
        app.add_exception_handler(kind, store_unavailable)
