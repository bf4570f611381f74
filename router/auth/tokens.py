"""API tokens for scripts and scrapers: random, shown once, kept as a SHA-256, revocable.

A token carries a subset of its user's roles; it stops working when it is
revoked, when it expires, or when its user is disabled. Rotating one gives a new
token while the old one works on for an overlap, so a sending system never goes
without a token that works.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from router import audit
from router.auth.roles import decode, encode, grants, parse_roles
from router.auth.users import find_user
from router.store.inbound import utcnow
from router.store.schema import api_tokens, users

PREFIX = "tie_"
MAX_LENGTH = 128
MAX_LABEL = 64


def check_label(label: str | None) -> str | None:
    """A token's label, trimmed (None when empty): at most MAX_LABEL printable characters,
    as it is shown in listings, tables and terminals."""
    text = (label or "").strip()
    if len(text) > MAX_LABEL:
        raise ValueError(f"a token's label has at most {MAX_LABEL} characters")
    if not text.isprintable():
        raise ValueError("a token's label is printable text: no tabs, line breaks or controls")
    return text or None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def issue_token(
    conn: Connection,
    user_name: str,
    roles: list[str],
    *,
    actor: str,
    expires_at: datetime | None = None,
    reason: str = "",
    label: str | None = None,
) -> tuple[int, str]:
    """A new token for ``user_name``: (its id, the token itself, which is not kept).
    ``reason``, when given, is kept in the audit event (the token never is); ``label``
    names it in listings, to tell the user's tokens apart."""
    label = check_label(label)
    user = find_user(conn, user_name)
    if user is None:
        raise LookupError(f"no user {user_name!r}")
    if user.disabled:
        raise ValueError(f"user {user_name!r} is disabled")
    chosen = parse_roles(roles)
    missing = sorted(r for r in chosen if not grants(user.roles, r))
    if missing:
        raise ValueError(f"user {user_name!r} does not hold the role {missing[0]!r}")
    token = PREFIX + secrets.token_urlsafe(32)
    token_id = conn.execute(
        api_tokens.insert().values(
            user_id=user.id,
            token_hash=digest(token),
            roles=encode(chosen),
            created_at=utcnow(),
            created_by=actor,
            expires_at=expires_at,
            label=label,
        )
    ).inserted_primary_key[0]
    details: dict[str, Any] = {"token": token_id, "roles": sorted(chosen), "expires_at": expires_at}
    if label:
        details["label"] = label
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "token-issue", f"user:{user_name}", details)
    return token_id, token


def revoke_token(conn: Connection, token_id: int, *, actor: str, reason: str = "") -> None:
    """Revoke the token (again: audited, nothing changes); ``reason`` is kept when given."""
    row = conn.execute(
        select(api_tokens.c.revoked_at, users.c.name)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.id == token_id)
    ).first()
    if row is None:
        raise LookupError(f"no token {token_id}")
    if row.revoked_at is None:
        conn.execute(
            api_tokens.update()
            .where(api_tokens.c.id == token_id)
            .values(revoked_at=utcnow(), revoked_by=actor)
        )
    details: dict[str, Any] = {"token": token_id}
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "token-revoke", f"user:{row.name}", details)


def relabel_token(
    conn: Connection, token_id: int, label: str | None, *, actor: str, reason: str = ""
) -> str | None:
    """Set the token's label (``check_label``'s rules; empty: none) and return it; audited
    as ``token-label`` with the label it had, and ``reason`` when given."""
    new = check_label(label)
    row = conn.execute(
        select(api_tokens.c.label, users.c.name)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.id == token_id)
    ).first()
    if row is None:
        raise LookupError(f"no token {token_id}")
    conn.execute(api_tokens.update().where(api_tokens.c.id == token_id).values(label=new))
    details: dict[str, Any] = {"token": token_id, "label": new, "was": row.label}
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "token-label", f"user:{row.name}", details)
    return new


@dataclass(frozen=True)
class Rotation:
    user: str
    new_id: int
    token: str
    old_expires_at: datetime
    expires_at: datetime | None


def rotate_token(
    conn: Connection,
    token_id: int,
    *,
    actor: str,
    overlap: timedelta,
    expires_at: datetime | None = None,
    reason: str = "",
) -> Rotation:
    """A new token with the old one's user, roles and label; the old one keeps working for
    ``overlap`` more (at most until it would have expired anyway), long enough to put the
    new one in place, then expires. Without ``expires_at``, the new token lives as long
    as the old one was given (none: until revoked). ``reason`` is kept when given."""
    t = api_tokens.c
    old = conn.execute(
        select(t.roles, t.created_at, t.expires_at, t.revoked_at, t.label, users.c.name)
        .add_columns(users.c.roles.label("user_roles"))
        .join(users, users.c.id == t.user_id)
        .where(t.id == token_id)
    ).first()
    if old is None:
        raise LookupError(f"no token {token_id}")
    now = utcnow()
    if old.revoked_at is not None or (old.expires_at is not None and old.expires_at <= now):
        raise ValueError(f"token {token_id} is revoked or expired: issue a new one instead")
    if expires_at is None and old.expires_at is not None:
        expires_at = now + (old.expires_at - old.created_at)
    held = decode(old.user_roles)
    roles = sorted(r for r in decode(old.roles) if grants(held, r))  # what it works for now
    new_id, token = issue_token(
        conn, old.name, roles, actor=actor, expires_at=expires_at, label=old.label
    )
    until = min(now + overlap, old.expires_at) if old.expires_at else now + overlap
    conn.execute(api_tokens.update().where(t.id == token_id).values(expires_at=until))
    details: dict[str, Any] = {"token": token_id, "new_token": new_id, "old_expires_at": until}
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "token-rotate", f"user:{old.name}", details)
    return Rotation(old.name, new_id, token, until, expires_at)


def token_state(row: Any, now: datetime) -> str:
    """``live``, ``expired`` or ``revoked``: what a listing's reader wants first."""
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "live"


def list_tokens(
    conn: Connection, user_name: str | None = None, *, expiring_within: timedelta | None = None
) -> list[dict[str, Any]]:
    """Tokens (never their values) with their state; ``expiring_within``: only live ones
    that expire within it, soonest first (the ones a sending system will lose next)."""
    t = api_tokens.c
    now = utcnow()
    query = (
        select(t.id, users.c.name.label("user"), t.label, t.roles, t.created_at, t.created_by)
        .add_columns(t.expires_at, t.revoked_at, t.revoked_by, t.last_used_at)
        .join(users, users.c.id == t.user_id)
        .order_by(t.id)
    )
    if user_name:
        query = query.where(users.c.name == user_name)
    if expiring_within is not None:
        query = (
            query.where(t.revoked_at.is_(None), t.expires_at > now)
            .where(t.expires_at <= now + expiring_within)
            .order_by(None)
            .order_by(t.expires_at, t.id)
        )
    return [
        dict(r._mapping, roles=sorted(decode(r.roles)), state=token_state(r, now))
        for r in conn.execute(query)
    ]


@dataclass(frozen=True)
class Bearer:
    """Who a live token acts for, with which roles, and who issued it (``created_by``);
    the token's id and when it was last noted as used (router/auth/token_use.py)."""

    name: str
    roles: frozenset[str]
    issued_by: str
    token_id: int
    last_used_at: datetime | None


def token_bearer(conn: Connection, token: str) -> Bearer | None:
    """The holder of a live token, else None."""
    if not token.startswith(PREFIX) or len(token) > MAX_LENGTH:
        return None
    row = conn.execute(
        select(users.c.name, users.c.roles.label("user_roles"), users.c.disabled)
        .add_columns(api_tokens.c.roles, api_tokens.c.expires_at, api_tokens.c.revoked_at)
        .add_columns(api_tokens.c.created_by, api_tokens.c.id, api_tokens.c.last_used_at)
        .join(users, users.c.id == api_tokens.c.user_id)
        .where(api_tokens.c.token_hash == digest(token))
    ).first()
    if row is None or row.disabled or row.revoked_at is not None:
        return None
    if row.expires_at is not None and row.expires_at <= utcnow():
        return None
    held = decode(row.user_roles)
    roles = frozenset(r for r in decode(row.roles) if grants(held, r))
    return Bearer(row.name, roles, row.created_by, row.id, row.last_used_at)


def token_holder(conn: Connection, token: str) -> tuple[str, frozenset[str]] | None:
    """(user name, roles) for a live token, else None."""
    bearer = token_bearer(conn, token)
    return (bearer.name, bearer.roles) if bearer else None
