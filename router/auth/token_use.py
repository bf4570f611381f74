"""When each API token was last used, so that whoever rotates a sending system's token can
tell whether the old one is still sent.

Written at most once a minute per token: the request that finds the stored time older
than ``NOTE_EVERY`` (or none) writes it, every other request only reads it with the
token, as it did before. The update is conditional, so nodes and requests racing for the
same minute write it once. Noting is best-effort: a store too busy to take the write
leaves the time a minute stale, never refuses a request the token was good for.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime, timedelta

from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from router.auth.tokens import Bearer, token_bearer
from router.repeat_log import RepeatLog
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import api_tokens

log = logging.getLogger(__name__)

NOTE_EVERY = timedelta(minutes=1)
_unnoted = RepeatLog(log)


def due(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a use at ``now`` should be written: never noted, or not within NOTE_EVERY."""
    return last_used_at is None or now - last_used_at >= NOTE_EVERY


def note_use(conn: Connection, token_id: int, now: datetime) -> bool:
    """Set the token's ``last_used_at`` to ``now`` unless another request did within
    NOTE_EVERY; True when this call wrote it."""
    t = api_tokens.c
    stale = t.last_used_at.is_(None) | (t.last_used_at <= now - NOTE_EVERY)
    done = conn.execute(api_tokens.update().where(t.id == token_id, stale).values(last_used_at=now))
    return done.rowcount == 1


def use_token(store: Store, token: str) -> Bearer | None:
    """The holder of a live token (router/auth/tokens.py), its use noted when due."""
    with store.read() as conn:
        bearer = token_bearer(conn, token)
    if bearer is None:
        return None
    now = utcnow()
    if due(bearer.last_used_at, now):
        try:
            with store.begin() as conn:
                note_use(conn, bearer.token_id, now)
        except (SQLAlchemyError, sqlite3.Error) as exc:  # SQLite's BEGIN is the driver's own
            _unnoted.warning("note", "could not note the use of token %d: %s", bearer.token_id, exc)
    return bearer
