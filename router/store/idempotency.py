"""Idempotency keys of the API's replays: one request per actor and key, its answer kept.

The first request with a key claims it (a row with no answer yet), does its work, then
keeps its answer; a retry with the same key and the same request gets that answer, and one
with another request is refused. A failed request gives its claim up, so a retry runs it.
A key lives ``KEY_LIFETIME``: an older row counts as absent, and retention deletes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select, update

from router.store.schema import idempotency_keys

KEY_LIFETIME = timedelta(hours=24)
k = idempotency_keys.c


@dataclass(frozen=True)
class Seen:
    """The key was used before, by ``route`` and a request whose hash is ``request_hash``;
    ``status`` and ``answer`` are None while that request is still being answered."""

    route: str
    request_hash: str
    created_at: datetime
    status: int | None
    answer: str | None


def claim(
    conn: Connection, actor: str, key: str, route: str, request_hash: str, now: datetime
) -> Seen | None:
    """None when the key is now this request's to answer; else what used it before. A claim
    made at the same moment by another transaction makes this one's commit fail
    (IntegrityError): that request is still being answered."""
    row = conn.execute(
        select(k.route, k.request_hash, k.created_at, k.status, k.answer).where(
            k.actor == actor, k.key == key
        )
    ).first()
    if row is not None and row.created_at > now - KEY_LIFETIME:
        return Seen(row.route, row.request_hash, row.created_at, row.status, row.answer)
    if row is not None:
        conn.execute(delete(idempotency_keys).where(k.actor == actor, k.key == key))
    claimed = dict(actor=actor, key=key, route=route, request_hash=request_hash, created_at=now)
    conn.execute(idempotency_keys.insert().values(**claimed))
    return None


def keep(conn: Connection, actor: str, key: str, status: int, answer: str) -> None:
    """The claimed request's answer, for its retries."""
    conn.execute(
        update(idempotency_keys)
        .where(k.actor == actor, k.key == key)
        .values(status=status, answer=answer)
    )


def give_up(conn: Connection, actor: str, key: str) -> None:
    """The claimed request failed before it replayed anything: a retry may run it."""
    conn.execute(delete(idempotency_keys).where(k.actor == actor, k.key == key, k.status.is_(None)))


def expire(conn: Connection, now: datetime) -> int:
    """Delete the keys older than ``KEY_LIFETIME``; how many."""
    gone = conn.execute(delete(idempotency_keys).where(k.created_at <= now - KEY_LIFETIME))
    return gone.rowcount or 0
