"""API authentication: a bearer token checked in constant time.

Until users and roles exist, the engine accepts one operator token whose
SHA-256 is given in ``TIE_API_TOKEN_SHA256`` (or the token itself in
``TIE_API_TOKEN``); with neither set, every API call is refused. Tokens never
live in configuration files.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from fastapi import Header, HTTPException, status


def _expected() -> str | None:
    digest = os.environ.get("TIE_API_TOKEN_SHA256")
    if digest:
        return digest.strip().lower()
    token = os.environ.get("TIE_API_TOKEN")
    return hashlib.sha256(token.encode()).hexdigest() if token else None


def require_token(authorization: str | None = Header(default=None)) -> str:
    """FastAPI dependency: 401 unless the request carries the operator token."""
    expected = _expected()
    scheme, _, token = (authorization or "").partition(" ")
    if expected is None or scheme.lower() != "bearer" or not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "authentication required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid token", headers={"WWW-Authenticate": "Bearer"}
        )
    return "operator"
