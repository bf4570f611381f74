"""The audit log: append-only, each event hash-chained to the one before it.

``verify`` recomputes the chain and names the first event that does not fit,
so an edited or deleted row is caught (DESIGN.md §7).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, text

from router.store.database import Store
from router.store.ingest import utcnow
from router.store.schema import audit_events

GENESIS = "0" * 64
_LOCK_KEY = 0x7469655F617564  # "tie_aud": serialises appenders on PostgreSQL


def _digest(prev: str, at: datetime, actor: str, action: str, target: str, details: str) -> str:
    body = json.dumps([prev, at.isoformat(), actor, action, target, details], separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def append(conn: Connection, actor: str, action: str, target: str, details: dict[str, Any]) -> str:
    """Add one event inside the caller's transaction; returns its hash."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    prev = conn.scalar(select(audit_events.c.hash).order_by(audit_events.c.id.desc()).limit(1))
    prev = prev or GENESIS
    at = utcnow()
    body = json.dumps(details, sort_keys=True, default=str)
    digest = _digest(prev, at, actor, action, target, body)
    conn.execute(
        audit_events.insert().values(
            at=at,
            actor=actor,
            action=action,
            target=target,
            details=body,
            prev_hash=prev,
            hash=digest,
        )
    )
    return digest


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    broken_id: int | None = None
    reason: str | None = None


def verify(store: Store) -> Verdict:
    """Walk the chain in order; the first mismatch is reported."""
    prev = GENESIS
    count = 0
    with store.read() as conn:
        for row in conn.execute(select(audit_events).order_by(audit_events.c.id)):
            count += 1
            if row.prev_hash != prev:
                return Verdict(
                    False, count, row.id, "previous hash does not match (event removed?)"
                )
            expected = _digest(prev, row.at, row.actor, row.action, row.target, row.details)
            if row.hash != expected:
                return Verdict(False, count, row.id, "content does not match its hash (edited?)")
            prev = row.hash
    return Verdict(True, count)
