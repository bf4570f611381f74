"""The audit log: append-only, each event hash-chained to the one before it.

``verify`` recomputes the chain and names the first event that does not fit,
so an edited or deleted row is caught (DESIGN.md §7). Events removed from the chain's
end leave no gap to find: an ``Anchor`` (the newest event of an earlier verify, kept
outside the store) catches them, since that event must still be there, unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.engine import Row

from router.store.blobs import BlobStore, write_durably
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.queries import find_message_id, message_detail
from router.store.schema import audit_events

GENESIS = "0" * 64
_LOCK_KEY = 0x7469655F617564  # "tie_aud": serialises appenders on PostgreSQL
_os_user: ContextVar[str | None] = ContextVar("tie_audit_os_user", default=None)
_idempotency_key: ContextVar[str | None] = ContextVar("tie_audit_idempotency_key", default=None)


@contextmanager
def run_by(os_user: str) -> Iterator[None]:
    """Every event appended inside comes from a command line run by ``os_user``
    (``user@host``): its details keep that beside the actor, who is only claimed there
    (``--actor``), whichever service function writes the event."""
    token = _os_user.set(os_user)
    try:
        yield
    finally:
        _os_user.reset(token)


@contextmanager
def requested_with(idempotency_key: str) -> Iterator[None]:
    """Every event appended inside comes from the API request sent with this
    ``Idempotency-Key`` (the header bounds it: 1 to 255 visible ASCII characters): its
    details keep the key, as its retries' ``<kind>.repeat`` events do, so the audit log
    tells a request from its retry, whichever service function writes the event."""
    token = _idempotency_key.set(idempotency_key)
    try:
        yield
    finally:
        _idempotency_key.reset(token)


def _digest(prev: str, at: datetime, actor: str, action: str, target: str, details: str) -> str:
    body = json.dumps([prev, at.isoformat(), actor, action, target, details], separators=(",", ":"))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def append(conn: Connection, actor: str, action: str, target: str, details: dict[str, Any]) -> str:
    """Add one event inside the caller's transaction; returns its hash."""
    return append_many(conn, actor, action, [(target, details)])


def append_many(
    conn: Connection, actor: str, action: str, events: list[tuple[str, dict[str, Any]]]
) -> str:
    """Add one event per ``(target, details)``, in order and chained one to the next, inside
    the caller's transaction; returns the last one's hash. A bulk replay's batch takes the
    appenders' lock and reads the chain's head once, not once an item."""
    if not events:
        raise ValueError("no events to append")
    context = {"os_user": _os_user.get(), "idempotency_key": _idempotency_key.get()}
    noted = {name: value for name, value in context.items() if value is not None}
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    prev = conn.scalar(select(audit_events.c.hash).order_by(audit_events.c.id.desc()).limit(1))
    prev = prev or GENESIS
    rows = []
    for target, details in events:
        if noted:
            details = {**details, **noted}
        at = utcnow()
        body = json.dumps(details, sort_keys=True, default=str)
        digest = _digest(prev, at, actor, action, target, body)
        rows.append(
            {
                "at": at,
                "actor": actor,
                "action": action,
                "target": target,
                "details": body,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    # One statement a row, in order: the ids follow the chain, which ``verify`` walks by id.
    conn.execute(audit_events.insert(), rows)
    return prev


def viewed_message(
    conn: Connection, ref: str, blobs: BlobStore | None, *, actor: str | None, via: str
) -> dict[str, Any] | None:
    """Message ``ref``'s detail (None when there is none), its reading by ``actor`` recorded
    as a ``view`` event in the same transaction: who saw patient data is kept (DESIGN.md §7).
    ``actor`` None reads without an event (metadata only is shown)."""
    message_id = find_message_id(conn, ref)
    detail = None if message_id is None else message_detail(conn, message_id, blobs)
    if detail is not None and actor is not None:
        append(conn, actor, "view", f"urn:tie:message:{detail['uuid']}", {"via": via})
    return detail


def searched_content(
    conn: Connection, actor: str, text: str, found: list[str], *, via: str
) -> None:
    """Record ``actor``'s search of message content for ``text`` as a ``search`` event, with
    the UUIDs of the messages ``found``: learning which messages hold an NHS number or a
    name is a view of content (DESIGN.md §7). The text is kept as its SHA-256, so the log
    does not spell out patient identifiers while an auditor can still look one up."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    details = {"via": via, "text_sha256": digest, "found": found}
    append(conn, actor, "search", "messages", details)


@dataclass(frozen=True)
class Anchor:
    """An event of the chain as a verify found it: its id and hash."""

    id: int
    hash: str


def read_anchor(path: Path) -> Anchor | None:
    """The anchor kept in ``path``, or None when there is none yet (the first verify);
    ValueError when the file holds something else."""
    try:
        data = json.loads(path.read_bytes())
        return Anchor(int(data["id"]), str(data["hash"]))
    except FileNotFoundError:
        return None
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not an audit anchor ({type(exc).__name__}: {exc})") from exc


def write_anchor(path: Path, anchor: Anchor) -> None:
    """Keep ``anchor`` in ``path``, whole or not at all."""
    write_durably(path, lambda file: file.write(json.dumps(asdict(anchor)).encode()))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    broken_id: int | None = None
    reason: str | None = None
    head: Anchor | None = None  # the newest event of an intact chain


def verify(store: Store, anchor: Anchor | None = None) -> Verdict:
    """Walk the chain in order; the first mismatch is reported, and a missing or changed
    ``anchor`` (events removed from the end, or the chain rewritten since)."""
    prev = GENESIS
    count = newest = 0
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
            prev, newest = row.hash, row.id
            if anchor is not None and row.id == anchor.id and row.hash == anchor.hash:
                anchor = None
    if anchor is not None:
        return Verdict(
            False,
            count,
            anchor.id,
            "the anchored event is gone or changed (events removed from the end?)",
        )
    return Verdict(True, count, head=Anchor(newest, prev) if count else None)


@dataclass(frozen=True)
class EventFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


def events(conn: Connection, f: EventFilter) -> list[dict[str, Any]]:
    """Events newest first; ``before_id`` is the cursor (target and time are indexed). An
    action or target ending in ``*`` is a prefix: ``resend*`` finds resends and their
    repeats (``resend.repeat``), ``revision.*`` every step of a revision."""
    a = audit_events.c
    query = select(a.id, a.at, a.actor, a.action, a.target, a.details, a.hash)
    if f.actor:
        query = query.where(a.actor == f.actor)
    for column, value in ((a.action, f.action), (a.target, f.target)):
        if value and value.endswith("*"):
            # Not LIKE: SQLite's ignores case, so the same filter would find more there.
            prefix = value[:-1]
            query = query.where(func.substr(column, 1, len(prefix)) == prefix)
        elif value:
            query = query.where(column == value)
    if f.since:
        query = query.where(a.at >= _utc(f.since))
    if f.until:
        query = query.where(a.at < _utc(f.until))
    if f.before_id:
        query = query.where(a.id < f.before_id)
    return [_event(r) for r in conn.execute(query.order_by(a.id.desc()).limit(f.limit))]


def _event(row: Row[Any]) -> dict[str, Any]:
    event = dict(row._mapping)
    event["details"] = json.loads(row.details)
    return event


def _utc(moment: datetime) -> datetime:
    """A time without a zone is UTC, as everywhere in the store."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
