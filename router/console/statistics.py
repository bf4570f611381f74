"""The dashboard's figures per channel, each from one grouped query (never a query per row).

Counts come from the covering indexes (messages: channel, status, received_at;
deliveries: channel, status, updated_at). "Today" starts at midnight UTC, like
every time in the store.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, case, func, select

from router.channel_control import overview
from router.store.database import Store
from router.store.schema import PENDING, deliveries, messages

m, d = messages.c, deliveries.c
MESSAGE_COUNTS = ("received", "filtered", "error")
DELIVERY_COUNTS = ("sent", "failed", "held")


def midnight(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def dashboard(store: Store, channels: list[str]) -> list[dict[str, Any]]:
    """Per channel: the overview (paused, backlog, queued, failed) with counts today and in
    total, the age of the oldest pending delivery and the newest error; channels that need
    attention first."""
    today = midnight()
    rows = {row["channel"]: row for row in overview(store, channels)}
    with store.read() as conn:
        received = _message_counts(conn, today)
        sent = _delivery_counts(conn, today)
        oldest = dict(
            conn.execute(
                select(d.channel, func.min(d.created_at))
                .where(d.status.in_(PENDING))
                .group_by(d.channel)
            ).all()
        )
        errors = _last_errors(conn)
    for name, row in rows.items():
        row["counts"] = {
            "received": _pair(received, name, None),
            "filtered": _pair(received, name, "filtered"),
            "error": _pair(received, name, "error"),
            "sent": _pair(sent, name, "sent"),
            "failed": _pair(sent, name, "failed"),
            "held": _pair(sent, name, "held"),
        }
        row["oldest_queued"] = oldest.get(name)
        row["last_error"] = errors.get(name)
        row["attention"] = bool(row["failed"] or row["counts"]["error"]["total"])
    return sorted(rows.values(), key=lambda r: (not r["attention"], not r["paused"], r["channel"]))


Counts = dict[tuple[str, str | None], tuple[int, int]]


def _message_counts(conn: Connection, today: datetime) -> Counts:
    """(channel, status) -> (today, total); status None is every message received."""
    return _grouped(conn, m.channel, m.status, m.received_at, today)


def _delivery_counts(conn: Connection, today: datetime) -> Counts:
    """(channel, status) -> (today, total) for sent, failed and held deliveries, by when they
    reached that status."""
    return _grouped(conn, d.channel, d.status, d.updated_at, today, d.status.in_(DELIVERY_COUNTS))


def _grouped(
    conn: Connection, channel: Any, status: Any, moment: Any, today: datetime, *where: Any
) -> Counts:
    query = (
        select(
            channel,
            status,
            func.sum(case((moment >= today, 1), else_=0)),
            func.count(),
        )
        .where(*where)
        .group_by(channel, status)
    )
    counts: Counts = {}
    for name, state, day, total in conn.execute(query):
        counts[(name, state)] = (int(day or 0), int(total))
        before = counts.get((name, None), (0, 0))
        counts[(name, None)] = (before[0] + int(day or 0), before[1] + int(total))
    return counts


def _pair(counts: Counts, channel: str, status: str | None) -> dict[str, int]:
    day, total = counts.get((channel, status), (0, 0))
    return {"today": day, "total": total}


def _last_errors(conn: Connection) -> dict[str, dict[str, Any]]:
    """The newest failing delivery or errored message of each channel: what and when."""
    newest_delivery = (
        select(func.max(d.id))
        .where(d.status.in_(("failed", "retrying")), d.last_error.is_not(None))
        .group_by(d.channel)
    )
    newest_message = select(func.max(m.id)).where(m.status == "error").group_by(m.channel)
    found: dict[str, dict[str, Any]] = {}
    for row in conn.execute(
        select(d.channel, d.updated_at, d.last_error, d.message_id, d.destination).where(
            d.id.in_(newest_delivery)
        )
    ):
        found[row.channel] = {
            "at": row.updated_at,
            "text": f"{row.destination}: {row.last_error}",
            "message_id": row.message_id,
        }
    for row in conn.execute(
        select(m.channel, m.received_at, m.error, m.id).where(m.id.in_(newest_message))
    ):
        current = found.get(row.channel)
        if current is None or row.received_at > current["at"]:
            found[row.channel] = {"at": row.received_at, "text": row.error, "message_id": row.id}
    return found
