"""Console sessions kept on the server: the cookie holds a random id, the store its hash.

A session ends at logout, after ``idle`` seconds without a request, or ``lifetime``
seconds after sign-in, whichever comes first. Each one has its own CSRF token.
Activity is noted at most once a minute, and at least every tenth of ``idle``, so an
idle limit under a minute does not end sessions in use. A page's own background refresh
is not activity (``activity=False``): it would keep an open page signed in for ever.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select

from router.auth.roles import decode
from router.auth.tokens import digest
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import sessions, users

TOUCH_EVERY = timedelta(seconds=60)  # at most one write per session a minute
MAX_LENGTH = 128


@dataclass(frozen=True)
class Session:
    """A live session; ``idle_ends`` is when it ends unless used before."""

    name: str
    roles: frozenset[str]
    csrf: str
    idle_ends: datetime
    expires_at: datetime
    password_set_by: str | None  # who set the password it signed in with; None: not known


def start_session(
    conn: Connection, user_id: int, *, lifetime: float, password_set_by: str | None
) -> tuple[str, str]:
    """A new session for the user: (the cookie value, the CSRF token), noted as the user's
    last sign-in (one write with the session's own, so never throttled). ``password_set_by`` is
    who set the password just checked: kept with the session, so that a later reset does
    not change who the session's credential came from (four eyes, docs/governance.md)."""
    now = utcnow()
    conn.execute(delete(sessions).where(sessions.c.expires_at <= now))
    conn.execute(users.update().where(users.c.id == user_id).values(last_sign_in_at=now))
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    conn.execute(
        sessions.insert().values(
            token_hash=digest(token),
            user_id=user_id,
            csrf=csrf,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=lifetime),
            password_set_by=password_set_by,
        )
    )
    return token, csrf


def load_session(store: Store, token: str, *, idle: float, activity: bool = True) -> Session | None:
    """The live session for a cookie value; an expired one is deleted.

    A read, and a write only to delete an expired session or to note activity
    (once a minute, and never for a request that is not ``activity``), so most requests
    do not wait for the store's writer.
    """
    if not token or len(token) > MAX_LENGTH:
        return None
    with store.read() as conn:
        row = conn.execute(
            select(sessions.c.id, sessions.c.csrf, sessions.c.last_seen_at, sessions.c.expires_at)
            .add_columns(sessions.c.password_set_by)
            .add_columns(users.c.name, users.c.roles, users.c.disabled)
            .join(users, users.c.id == sessions.c.user_id)
            .where(sessions.c.token_hash == digest(token))
        ).first()
    if row is None:
        return None
    now = utcnow()
    if row.disabled or row.expires_at <= now or row.last_seen_at + timedelta(seconds=idle) <= now:
        with store.begin() as conn:
            conn.execute(delete(sessions).where(sessions.c.id == row.id))
        return None
    seen = row.last_seen_at
    if activity and now - seen >= min(TOUCH_EVERY, timedelta(seconds=idle / 10)):
        with store.begin() as conn:
            conn.execute(sessions.update().where(sessions.c.id == row.id).values(last_seen_at=now))
        seen = now
    return Session(
        row.name,
        decode(row.roles),
        row.csrf,
        seen + timedelta(seconds=idle),
        row.expires_at,
        row.password_set_by,
    )


def keep_alive(store: Store, token: str, *, idle: float) -> Session | None:
    """Note activity now, however recently it was noted: the user asked to stay signed in."""
    session = load_session(store, token, idle=idle, activity=False)
    if session is None:
        return None
    now = utcnow()
    with store.begin() as conn:
        conn.execute(
            sessions.update().where(sessions.c.token_hash == digest(token)).values(last_seen_at=now)
        )
    return replace(session, idle_ends=now + timedelta(seconds=idle))


def end_session(conn: Connection, token: str) -> None:
    if token and len(token) <= MAX_LENGTH:
        conn.execute(delete(sessions).where(sessions.c.token_hash == digest(token)))
