"""One-time form nonces: random, and signed with the session's CSRF token, so a nonce is
bound to the session whose page carried it and cannot be made up (router/console/form_once.py
records each one's first sending)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

FIELD = "form_nonce"
MAX_KEY = 32
_KEY_BYTES = 16  # 22 characters of base64url
_SIGNATURE_LENGTH = 32


def new_nonce(csrf: str) -> str:
    """A nonce for one form of the session whose CSRF token is ``csrf``."""
    key = secrets.token_urlsafe(_KEY_BYTES)
    return f"{key}.{_signature(csrf, key)}"


def nonce_key(nonce: object, csrf: str) -> str | None:
    """The nonce's key when ``nonce`` was made by ``new_nonce`` for this ``csrf``; else None."""
    if not isinstance(nonce, str) or not csrf or nonce.count(".") != 1:
        return None
    key, signature = nonce.split(".")
    if not key or len(key) > MAX_KEY:
        return None
    return key if hmac.compare_digest(signature, _signature(csrf, key)) else None


def _signature(csrf: str, key: str) -> str:
    mac = hmac.new(csrf.encode(), key.encode(), hashlib.sha256)
    return mac.hexdigest()[:_SIGNATURE_LENGTH]
