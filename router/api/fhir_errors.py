"""FHIR answers for the errors the web framework raises itself under ``/fhir`` and ``/proxy``.

The gateway (router/api/gateway_asgi.py) and the registry answer their own refusals with
OperationOutcomes, but a path no route takes (404), a method a route does not take (405),
a request that fails FastAPI's validation, a body over the API's limit (413) or an
unexpected failure (500) are raised by FastAPI and Starlette, whose ``{"detail": ...}``
JSON a FHIR client cannot read. Under these two prefixes they are OperationOutcomes
(``application/fhir+json``) with the FHIR issue type of the status; ``/api`` keeps its JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from router.fhir.intake import rejected_answer
from router.fhir.outcome import Issue, Rejected, reject

PREFIXES = ("/fhir", "/proxy")
# The FHIR issue type (http://hl7.org/fhir/issue-type) of each status raised outside tie's
# own FHIR code; any other status is ``processing``.
ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    414: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    500: "exception",
    503: "transient",
}


def is_fhir_path(path: str) -> bool:
    """Whether ``path`` is under ``/fhir`` or ``/proxy``, where a FHIR client calls."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PREFIXES)


def outcome_response(exc: Rejected, headers: Mapping[str, str]) -> Response:
    """``exc`` as an OperationOutcome, mirroring the request's BaRS ids."""
    answer = rejected_answer(exc, headers)
    return Response(answer.body, answer.status, answer.headers, media_type=answer.media_type)


def status_outcome(status: int, text: str, headers: Mapping[str, str]) -> Response:
    """An OperationOutcome for ``status`` with its issue type and ``text``."""
    return outcome_response(reject(status, ISSUE_CODES.get(status, "processing"), text), headers)


async def http_error(request: Request, exc: HTTPException) -> Response:
    """An ``HTTPException`` (404, 405 with its ``Allow``...) as an OperationOutcome."""
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404 and detail == HTTPStatus.NOT_FOUND.phrase:
        detail = f"nothing is served at {request.url.path}"
    elif exc.status_code == 405 and detail == HTTPStatus.METHOD_NOT_ALLOWED.phrase:
        detail = f"{request.method} is not allowed here"
    answer = status_outcome(exc.status_code, detail, request.headers)
    answer.headers.update(exc.headers or {})
    return answer


async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """A request FastAPI could not validate: 400 (FHIR's status for a request that cannot
    be understood), one ``invalid`` issue per problem, where it is as ``expression``."""
    issues = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ())[1:]) or None
        issues.append(Issue("invalid", str(error.get("msg", "invalid")), where))
    problem = Rejected(400, issues or [Issue("invalid", "the request is not valid")])
    return outcome_response(problem, request.headers)


def unexpected(request: Request) -> Response:
    """500 for a failure the engine did not expect (its traceback is in the engine's log)."""
    return status_outcome(500, "internal error: see the engine's log", request.headers)
