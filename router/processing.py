"""The processor: received messages become processed, filtered or error, with their deliveries.

Each batch's outcomes, deliveries and correlation keys are written in one
transaction (DESIGN.md §3.2): a crash before the commit means the messages are
processed again on restart, a crash after it means never again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from router.message import Message
from router.pipeline import CompiledChannel, Outcome, process
from router.store.database import Store
from router.store.ingest import utcnow
from router.store.schema import channel_state, correlations, deliveries, messages

log = logging.getLogger(__name__)
DestinationKey = tuple[str, str]


class Processor:
    """A thread that drains ``received`` messages of active, unpaused channels in receive order."""

    def __init__(
        self,
        store: Store,
        channels: dict[str, CompiledChannel],
        *,
        batch: int = 500,
        on_deliveries: Callable[[set[DestinationKey]], None] | None = None,
        idle_wait: float = 1.0,
    ) -> None:
        self._store = store
        self._channels = channels
        self._batch = batch
        self._on_deliveries = on_deliveries
        self._idle_wait = idle_wait
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tie-processor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wake(self) -> None:
        """Called after new messages are committed; cheap and thread-safe."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                done = self.run_once()
            except Exception:
                log.exception("processing batch failed; retrying shortly")
                done = 0
            if done < self._batch:
                self._wake.wait(self._idle_wait)
                self._wake.clear()

    def run_once(self) -> int:
        """Process one batch; returns how many messages it settled."""
        active = sorted(set(self._channels) - paused_channels(self._store))
        if not active:
            return 0
        if self._store.dialect == "postgresql":
            # Rows are locked (SKIP LOCKED) so that several nodes share the work.
            with self._store.begin() as conn:
                rows = _claim(conn, active, self._batch, lock=True)
                outcomes = self._process(rows)
                touched = _write(conn, outcomes, guard=False)
        else:
            # SQLite has one writer: process outside the write lock so ingest is never held up.
            with self._store.read() as conn:
                rows = _claim(conn, active, self._batch, lock=False)
            outcomes = self._process(rows)
            if not outcomes:
                return 0
            with self._store.begin() as conn:
                touched = _write(conn, outcomes, guard=True)
        if touched and self._on_deliveries is not None:
            self._on_deliveries(touched)
        return len(rows)

    def _process(self, rows: list[Any]) -> list[tuple[Any, Outcome]]:
        return [(row, process(self._channels[row.channel], _message(row))) for row in rows]


def paused_channels(store: Store) -> set[str]:
    with store.read() as conn:
        return set(conn.scalars(select(channel_state.c.channel).where(channel_state.c.paused)))


def _claim(conn: Connection, channels: Sequence[str], limit: int, *, lock: bool) -> list[Any]:
    m = messages.c
    query = (
        select(m.id, m.uuid, m.channel, m.raw, m.content_type, m.received_at, m.source)
        .where(m.status == "received", m.channel.in_(channels))
        .order_by(m.id)
        .limit(limit)
    )
    if lock:
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query))


def _message(row: Any) -> Message:
    return Message(
        raw=row.raw,
        channel=row.channel,
        uuid=row.uuid,
        id=row.id,
        received_at=row.received_at,
        content_type=row.content_type,
        source=json.loads(row.source) if row.source else {},
    )


def _write(
    conn: Connection, outcomes: list[tuple[Any, Outcome]], *, guard: bool
) -> set[DestinationKey]:
    """Settle messages, insert deliveries and keys; ``guard`` skips rows taken elsewhere."""
    now = utcnow()
    settled = [
        (row, outcome) for row, outcome in outcomes if not guard or _settle(conn, row, outcome, now)
    ]
    if not guard and settled:
        conn.execute(
            update(messages)
            .where(messages.c.id == bindparam("_id"))
            .values(status=bindparam("_status"), error=bindparam("_error"), processed_at=now),
            [{"_id": r.id, "_status": o.status, "_error": o.reason} for r, o in settled],
        )
    delivery_rows = [
        _delivery_row(row, d, now) for row, outcome in settled for d in outcome.deliveries
    ]
    if delivery_rows:
        conn.execute(deliveries.insert(), delivery_rows)
    key_rows = [
        {"message_id": row.id, "key": key, "value": value}
        for row, outcome in settled
        for key, value in dict.fromkeys(outcome.correlations)
    ]
    if key_rows:
        conn.execute(correlations.insert(), key_rows)
    return {(r["channel"], r["destination"]) for r in delivery_rows}


def _settle(conn: Connection, row: Any, outcome: Outcome, now: datetime) -> bool:
    result = conn.execute(
        update(messages)
        .where(messages.c.id == row.id, messages.c.status == "received")
        .values(status=outcome.status, error=outcome.reason, processed_at=now)
    )
    return result.rowcount == 1


def _delivery_row(row: Any, planned: Any, now: datetime) -> dict[str, Any]:
    return {
        "message_id": row.id,
        "channel": row.channel,
        "destination": planned.destination,
        "status": "queued",
        "content_type": planned.content_type,
        "payload": planned.payload,
        "ordering_key": planned.ordering_key,
        "idempotency_key": planned.idempotency_key,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }
