"""The dashboard's figures per channel, each read through an index, whatever the store's size.

What a support engineer needs at 3 a.m. is whether each feed is flowing now and what is
stuck or failing, not the store's history: so the counts are of the last hour and the
last 24 hours (index ranges of (channel, status, received_at) for messages and of
(channel, status, updated_at) for deliveries, with channels and statuses named, so
that no count reads a row older than a day), the backlog and queues come from the partial
pending indexes (router.channel_control), failed deliveries are counted, not read, and
the newest error of each channel is one backward seek of the same indexes. Counting
"in total" read every message and delivery on every load: 2-9 s at a million messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, Table, case, func, select, union_all

from router.channel_control import overview
from router.channel_health import PAUSED, RUNNING, ChannelHealth
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.queries import MESSAGE_STATUSES
from router.store.schema import deliveries, messages

m, d = messages.c, deliveries.c
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
DELIVERY_COUNTS = ("sent", "failed")
FAILING = ("failed", "retrying")
# Channels a statement asks the newest error of: SQLite joins at most 500 selects in one.
CHANNELS_A_STATEMENT = 100


def dashboard(
    store: Store, channels: list[str], health: Mapping[str, ChannelHealth] | None = None
) -> list[dict[str, Any]]:
    """Per channel: the overview (paused, backlog, queued and its oldest, failed, held) with
    counts of the last hour and the last 24 hours, the newest error, and what this node
    does with it (``health``: its state, the revision it runs and the newest deployed one,
    and why it is down or a fallback, router/channel_health.py); channels that need
    attention (failed deliveries now, errors in the last 24 hours, left out, failed to
    start or a fallback on this node) first."""
    health = health or {}
    now = utcnow()
    rows = {row["channel"]: row for row in overview(store, channels)}
    with store.read() as conn:
        received = _counts(conn, messages, m.received_at, MESSAGE_STATUSES, channels, now)
        sent = _counts(conn, deliveries, d.updated_at, DELIVERY_COUNTS, channels, now)
        errors = _last_errors(conn, channels)
    for name, row in rows.items():
        row["counts"] = {
            "received": _pair(received, name, None),
            "filtered": _pair(received, name, "filtered"),
            "error": _pair(received, name, "error"),
            "sent": _pair(sent, name, "sent"),
            "failed": _pair(sent, name, "failed"),
        }
        row["last_error"] = errors.get(name)
        row.update(_health(health.get(name), row["paused"]))
        row["attention"] = bool(
            health.get(name, ChannelHealth(RUNNING)).degraded
            or row["failed"]
            or row["counts"]["error"]["last_24h"]
        )
    return sorted(rows.values(), key=lambda r: (not r["attention"], not r["paused"], r["channel"]))


def _health(health: ChannelHealth | None, paused: bool) -> dict[str, Any]:
    """A row's state, revisions and reason; a channel ``health`` does not name runs."""
    if health is None:
        health = ChannelHealth(RUNNING)
    state = PAUSED if paused and health.state == RUNNING else health.state
    return {
        "state": state,
        "down": not health.up,
        "revision": health.revision,
        "deployed": health.deployed,
        "fallback": health.fallback,
        "restartable": health.restartable,
        "reason": health.reason,
    }


Counts = dict[tuple[str, str | None], tuple[int, int]]


def _counts(
    conn: Connection,
    table: Table,
    moment: Any,
    statuses: tuple[str, ...],
    channels: list[str],
    now: datetime,
) -> Counts:
    """(channel, status) -> (last hour, last 24 hours); status None is all of them.

    Messages by when they were received (every status, so all of them make "received");
    deliveries by when they reached ``sent`` or ``failed`` (and are still so)."""
    channel, status = table.c.channel, table.c.status
    query = (
        select(channel, status, func.sum(case((moment >= now - HOUR, 1), else_=0)), func.count())
        .where(channel.in_(channels), status.in_(statuses), moment >= now - DAY)
        .group_by(channel, status)
    )
    counts: Counts = {}
    for name, state, hour, day in conn.execute(query):
        counts[(name, state)] = (int(hour or 0), int(day))
        before = counts.get((name, None), (0, 0))
        counts[(name, None)] = (before[0] + int(hour or 0), before[1] + int(day))
    return counts


def _pair(counts: Counts, channel: str, status: str | None) -> dict[str, int]:
    hour, day = counts.get((channel, status), (0, 0))
    return {"last_hour": hour, "last_24h": day}


def _last_errors(conn: Connection, channels: list[str]) -> dict[str, dict[str, Any]]:
    """The newest failing delivery or errored message of each channel: what and when.

    Each is the first entry of a backward seek of the (channel, status, time) index: one
    limited select a channel and status, joined into one statement."""
    found: dict[str, dict[str, Any]] = {}
    for part in _parts(channels):
        failing = [
            select(d.channel, d.updated_at, d.last_error, d.message_id, d.destination)
            .where(d.channel == name, d.status == state, d.last_error.is_not(None))
            .order_by(d.updated_at.desc())
            .limit(1)
            for name in part
            for state in FAILING
        ]
        for row in conn.execute(_union(failing)):
            current = found.get(row.channel)
            if current is None or row.updated_at > current["at"]:
                text = f"{row.destination}: {row.last_error}"
                found[row.channel] = _error(row.updated_at, text, row.message_id)
        errored = [
            select(m.channel, m.received_at, m.error, m.id)
            .where(m.channel == name, m.status == "error")
            .order_by(m.received_at.desc())
            .limit(1)
            for name in part
        ]
        for row in conn.execute(_union(errored)):
            current = found.get(row.channel)
            if current is None or row.received_at > current["at"]:
                found[row.channel] = _error(row.received_at, row.error, row.id)
    return found


def _error(at: datetime, text: str | None, message_id: int) -> dict[str, Any]:
    return {"at": at, "text": text, "message_id": message_id}


def _parts(channels: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(channels), CHANNELS_A_STATEMENT):
        yield channels[start : start + CHANNELS_A_STATEMENT]


def _union(selects: list[Select[Any]]) -> Any:
    """Limited selects as one statement (SQLite takes a LIMIT only in a subquery of one)."""
    return union_all(*(select(*s.subquery().c) for s in selects))
