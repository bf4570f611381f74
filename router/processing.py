"""The processor: received messages become processed, filtered or error, with their deliveries.

Each batch's outcomes, deliveries and correlation keys are written in one
transaction (DESIGN.md §3.2; router/outcomes.py): a crash before the commit means the messages are
processed again on restart, a crash after it means never again.

A message of a declarative channel (conditions and field reads only, no mapping) is
decided as it is received instead (``Processor.decide``, called by the group-commit
writer): it is stored already settled, with its deliveries, in the transaction that
stores it. The processor's rounds then serve the other channels, paused channels'
backlogs and messages left ``received`` by a restart.

A destination of a *local* kind (the DPS ``job``) is no transport: it is applied to the
store in the same transaction, where it may refuse the message (results for a finished
job); a refused message is settled with the refusal instead of sending anything.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import islice
from typing import Any, cast

from sqlalchemy import Connection, bindparam, literal_column, select

from router import metrics
from router.config import UnmatchedFlag
from router.local_destinations import Local, LocalRoutes, local_routes
from router.message import Message
from router.outage_log import OutageLog
from router.outcomes import Stored, record_decided, write_outcomes
from router.pipeline import CompiledChannel, Outcome, PlannedDelivery, process
from router.store.blobs import BlobStore
from router.store.database import Store, Transact
from router.store.inbound import Inbound
from router.store.ingest import DestinationKey
from router.store.interruptible import STOP_GRACE, Interruptible
from router.store.placement import placed
from router.store.schema import (
    messages,
)
from router.store.settled import paused_channels

log = logging.getLogger(__name__)

# Statements built once: building one and computing its cache key costs more than running it.
_m = messages.c
_CLAIMED = (
    _m.id,
    _m.uuid,
    _m.channel,
    _m.raw,
    _m.blob_sha256,
    _m.size,
    _m.content_type,
    _m.received_at,
    _m.source,
)
# PostgreSQL: the status is a literal so that a generic (prepared) plan can still use the
# partial index of unprocessed messages.
_CLAIM_LOCKED = (
    select(*_CLAIMED)
    .where(
        _m.status == literal_column("'received'"),
        _m.channel.in_(bindparam("channels", expanding=True)),
    )
    .order_by(_m.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# SQLite: one seek a channel in the partial (channel, id) index of messages still
# ``received``, for the first ``limit`` ids of each; the first ``limit`` of them all are
# claimed. Walking the partial index of every ``received`` message in id order instead
# reads through a paused channel's backlog (every message of it, on every claim: 0.1-0.8 s
# at 200,000) to find the others'. INDEXED BY fails loudly if the index cannot be used.
_RECEIVED_IDS_SQL = (
    "SELECT id FROM messages INDEXED BY ix_messages_received_by_channel"
    " WHERE status = 'received' AND channel = ? ORDER BY id LIMIT ?"
)
_CLAIM_UNLOCKED = (
    select(*_CLAIMED)
    .where(_m.id.in_(bindparam("ids", expanding=True)), _m.status == "received")
    .order_by(_m.id)
)


class Processor:
    """A thread that drains ``received`` messages of active, unpaused channels in receive order,
    and the group-commit writer's ``Settler`` for declarative channels.

    ``transact(work)`` runs ``work(conn)`` in a write transaction on SQLite; by default the
    processor opens its own. ``local`` names the destination kinds applied in the processing
    transaction (the DPS ``job``). ``stop_grace``: how long a stop waits for a batch's
    statement (PostgreSQL) before it cancels it.
    """

    def __init__(
        self,
        store: Store,
        channels: dict[str, CompiledChannel],
        *,
        batch: int = 500,
        on_deliveries: Callable[[set[DestinationKey]], None] | None = None,
        idle_wait: float = 1.0,
        linger: float = 0.01,
        transact: Transact[Any] | None = None,
        local: dict[str, Local] | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._store = store
        self._stop_grace = stop_grace
        self._local_kinds = local or {}
        self._local = local_routes(channels, self._local_kinds)
        self._channels = channels
        self._batch = batch
        self._on_deliveries = on_deliveries
        self._idle_wait = idle_wait
        self._linger = linger
        self._transact = transact or store.run
        # PostgreSQL: the batch's transaction, whose statement a stop can cancel (one stuck
        # behind a lock held the engine's stop for as long as the lock was held).
        self._own = Interruptible(store) if store.dialect == "postgresql" else None
        self._unmatched = _unmatched_checks(channels)
        self._declarative = _declarative(channels, self._local)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tie-processor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the batch in hand; one whose statement still runs after the stop grace
        is cancelled (and rolled back: its messages stay ``received`` for the next start)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is None:
            return
        while self._thread.is_alive():
            self._thread.join(self._stop_grace if self._own else None)
            if self._thread.is_alive() and self._own and self._own.cancel():
                log.warning(
                    "stopping: the processing batch still ran after %.0f s; its statement is "
                    "cancelled",
                    self._stop_grace,
                )
        self._thread = None

    @property
    def alive(self) -> bool:
        """Whether the processor's thread runs: one that died leaves messages ``received``
        while their senders still get their ACK (/health says so)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def local(self) -> LocalRoutes:
        """The channels with local destinations, and those destinations, as now loaded."""
        return self._local

    def wake(self) -> None:
        """Called after new messages are committed; cheap and thread-safe."""
        self._wake.set()

    def use(self, channels: dict[str, CompiledChannel]) -> None:
        """Process with ``channels`` from the next batch on (a reload). Thread-safe: the
        mappings are replaced whole and each message looks its channel up once."""
        self._unmatched = _unmatched_checks(channels)
        self._local = local_routes(channels, self._local_kinds)
        self._declarative = _declarative(channels, self._local)
        self._channels = channels
        self._wake.set()

    def decide(self, item: Inbound) -> None:
        """Decide a received message of a declarative channel now, in its source's thread:
        pure, bounded work (conditions, field reads) that overlaps the writer's fsync.
        Payloads above the blob threshold are left to the processor, whose rounds write
        them to the blob store outside the write transaction."""
        channel = self._declarative.get(item.channel)
        raw = item.raw
        if (
            channel is None
            or item.status != "received"
            or not isinstance(raw, bytes)
            or len(raw) > self._store.blobs.threshold
        ):
            return
        message = Message(
            raw,
            item.channel,
            uuid=item.uuid,
            received_at=item.received_at,
            content_type=item.content_type,
            source=item.source or {},
            header=item.header,
        )
        item.outcome = process(channel, message)

    def record(self, conn: Connection, items: list[Inbound]) -> set[DestinationKey]:
        """Deliveries, keys and flags of messages just stored with their outcome."""
        ids = {i.uuid: i.id for i in items if i.id is not None}
        if len(ids) < len(items):
            ids |= _ids(conn, [i.uuid for i in items if i.id is None])
        settled = [(Stored(ids[i.uuid], i.channel), cast(Outcome, i.outcome)) for i in items]
        return record_decided(conn, settled, self._unmatched)

    def _run(self) -> None:
        try:
            self._rounds()
        except BaseException:
            log.exception("the processor stopped; nothing is processed until a restart")

    def _rounds(self) -> None:
        failures = OutageLog(log, "processing batch")
        while not self._stopping.is_set():
            try:
                done = self.run_once()
                failures.succeeded()
            except Exception as exc:
                if self._stopping.is_set():  # rolled back: processed at the next start
                    log.info("stopping: the processing batch in hand was rolled back")
                    return
                failures.failed(exc)
                done = 0
            if done < self._batch:
                self._wake.wait(self._idle_wait)
                self._wake.clear()
                # Let a few more messages arrive: one transaction (one fsync) for many
                # messages instead of one each, which would compete with ingest's commits.
                self._stopping.wait(self._linger)

    def run_once(self) -> int:
        """Process one batch; returns how many messages it settled."""
        if self._own is not None:
            # Rows are locked (SKIP LOCKED) so that several nodes share the work.
            rows, outcomes, touched = self._own(self._claim_and_write)
        else:
            # SQLite has one writer: process outside the write lock so ingest is never held up,
            # then write through ``transact`` (in the engine: ingest's next group commit).
            with self._store.read() as conn:
                rows = _claim(conn, self._active(conn), self._batch, lock=False)
            outcomes = self._process(rows)
            if not outcomes:
                return 0
            local = self._local
            touched = self._transact(
                lambda conn: write_outcomes(conn, outcomes, self._unmatched, local)
            )
        metrics.count_messages((row.channel, outcome.status) for row, outcome in outcomes)
        if touched and self._on_deliveries is not None:
            self._on_deliveries(touched)
        return len(rows)

    def _claim_and_write(
        self, conn: Connection
    ) -> tuple[list[Any], list[tuple[Any, Outcome]], set[DestinationKey]]:
        """PostgreSQL: claim a batch, process it and write its outcomes, in one transaction."""
        rows = _claim(conn, self._active(conn), self._batch, lock=True)
        outcomes = self._process(rows)
        return rows, outcomes, write_outcomes(conn, outcomes, self._unmatched, self._local)

    def _active(self, conn: Connection) -> list[str]:
        """This processor's channels that are not paused."""
        return sorted(set(self._channels) - paused_channels(conn))

    def _process(self, rows: list[Any]) -> list[tuple[Any, Outcome]]:
        """Outcomes, with large delivery payloads already in the blob store (outside the
        write transaction, which must not wait for file I/O)."""
        blobs = self._store.blobs
        done = []
        for row in rows:
            channel = self._channels.get(row.channel)
            if channel is None:  # removed by a reload since the claim: stays received
                continue
            outcome = process(channel, _message(row, blobs))
            outcome.deliveries = [_stored(d, blobs) for d in outcome.deliveries]
            done.append((row, outcome))
        return done


def _declarative(
    channels: dict[str, CompiledChannel], local: LocalRoutes
) -> dict[str, CompiledChannel]:
    """The channels whose messages are decided on receipt, by name (not those with a local
    destination, which the processor's write applies)."""
    return {name: c for name, c in channels.items() if c.declarative and name not in local}


def _ids(conn: Connection, uuids: list[str]) -> dict[str, int]:
    """Row ids of messages by uuid (the unique index), straight through the driver (SQLite
    or PostgreSQL, the store's two dialects)."""
    driver = conn.connection.driver_connection
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(uuids))
        sql = f"SELECT uuid, id FROM messages WHERE uuid IN ({marks})"
        return dict(driver.execute(sql, uuids).fetchall())
    with driver.cursor() as cursor:
        cursor.execute("SELECT uuid, id FROM messages WHERE uuid = ANY(%s)", (uuids,))
        return dict(cursor.fetchall())


def _unmatched_checks(channels: dict[str, CompiledChannel]) -> dict[str, UnmatchedFlag]:
    """The channels' ``unmatched`` checks, by channel name."""
    return {name: c.config.unmatched for name, c in channels.items() if c.config.unmatched}


def _claim(conn: Connection, channels: Sequence[str], limit: int, *, lock: bool) -> list[Any]:
    """The first ``limit`` messages still ``received`` of ``channels``, in receive (id) order;
    locked (PostgreSQL) so that other nodes skip them."""
    if not channels:
        return []
    if lock:
        return list(conn.execute(_CLAIM_LOCKED, {"channels": list(channels), "limit": limit}))
    # One transaction (the first statement begins it): the seeks and the read see one state.
    seeks = [
        conn.exec_driver_sql(_RECEIVED_IDS_SQL, (channel, limit)).scalars().all()
        for channel in channels
    ]
    ids = list(islice(heapq.merge(*seeks), limit))
    return list(conn.execute(_CLAIM_UNLOCKED, {"ids": ids})) if ids else []


def _message(row: Any, blobs: BlobStore) -> Message:
    return Message(
        raw=blobs.payload(row.raw, row.blob_sha256, row.size),
        channel=row.channel,
        uuid=row.uuid,
        id=row.id,
        received_at=row.received_at,
        content_type=row.content_type,
        source=json.loads(row.source) if row.source else {},
    )


def _stored(planned: PlannedDelivery, blobs: BlobStore) -> PlannedDelivery:
    """The delivery with a payload above the blob threshold written to the blob store."""
    payload = placed(blobs, planned.payload)
    return planned if payload is planned.payload else replace(planned, payload=payload)
