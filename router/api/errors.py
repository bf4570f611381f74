"""The error answers of the JSON API as its OpenAPI schema declares them.

Every error under ``/api`` is ``{"detail": ...}``, but FastAPI documents only a 422 whose
``detail`` is its own list of refused parameters: the API's other 422s (text, or an
object with ``message`` and ``problems``) did not match the schema, and 401, 403, 404,
409 and 413 were not in it at all, so a client generated from ``/openapi.json`` failed
on them. Every API router is included with these responses.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ApiError(BaseModel):
    """An error: why, as text; for a 422 pydantic's list of the parameters refused, or an
    object with ``message`` and ``problems``."""

    detail: str | list[dict[str, Any]] | dict[str, Any] = Field(description="why")


def _error(description: str) -> dict[str, Any]:
    return {"model": ApiError, "description": description}


API_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("the body is not the JSON it should be"),
    401: _error("no token or session, or one that is invalid or expired"),
    403: _error("the caller lacks the role, or a session's CSRF token is missing"),
    404: _error("no such message, delivery, channel, user or record"),
    409: _error("the record's state does not allow the action"),
    413: _error("the body is larger than 2 MiB"),
    422: _error("a parameter or the body is refused; detail says which and why"),
    500: _error("an unexpected failure: see the engine's log"),
}
