"""Group commit: every received message is committed before its sender is answered.

Sources hand messages to one writer thread. The writer takes everything that is
waiting, writes it in one transaction and answers all the waiters together, so
many concurrent connections share one fsync instead of paying one each
(DESIGN.md §3.1 and §3.6). The idempotent receiver check runs inside that same
transaction, so two copies of one message can never both be accepted.

A ``Settler`` (the processor) may decide a message's outcome as it is submitted, when
its channel runs no mapping: the message is then written already settled, with its
deliveries and keys, in the transaction that stores it (DESIGN.md §3.2 holds a
fortiori), and no processor round has to read it back and update it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, select

from router import metrics
from router.payload import Payload, as_payload
from router.store.database import Store, savepoint
from router.store.fast_insert import insert_rows
from router.store.schema import channel_state, messages

log = logging.getLogger(__name__)
_STOP = object()
_INSERT = messages.insert()  # built once: SQLAlchemy caches its compiled form by this object
T = TypeVar("T")
DestinationKey = tuple[str, str]
_PAUSED_SQL = "SELECT channel FROM channel_state WHERE paused"
_PAUSED = select(channel_state.c.channel).where(channel_state.c.paused)


def utcnow() -> datetime:
    return datetime.now(UTC)


def random_uuid() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` gives, in half the time.

    ``uuid.UUID`` goes through a 128-bit integer and validates its arguments; for every
    message a source receives, that was a measurable share of the listener's work.
    """
    data = bytearray(os.urandom(16))
    data[6] = data[6] & 0x0F | 0x40  # version 4
    data[8] = data[8] & 0x3F | 0x80  # RFC 4122 variant
    h = data.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Decided(Protocol):
    """A processing outcome decided before the commit (router.pipeline.Outcome)."""

    status: str
    reason: str | None


@dataclass(slots=True)
class Inbound:
    """A message as a source received it, with what it proposes to answer."""

    channel: str
    raw: bytes | Payload  # a Payload when the source streamed it into the blob store
    content_type: str = "hl7v2"
    message_type: str | None = None
    control_id: str | None = None
    sender: str | None = None
    source: dict[str, Any] | None = None
    ack: bytes | None = None
    status: str = "received"
    error: str | None = None
    idempotency_window: float | None = None
    origin_delivery_id: int | None = None
    received_at: datetime = field(default_factory=utcnow)
    uuid: str = field(default_factory=random_uuid)
    # Set by a Settler at submission: the message is stored with this outcome. Cleared when
    # the message turns out a duplicate or its channel is paused: the processor decides then.
    outcome: Decided | None = None


class Settler(Protocol):
    """Decides outcomes as messages are submitted and writes what they imply."""

    def decide(self, item: Inbound) -> None:
        """Set ``item.outcome`` when it can be decided now; runs in the submitter's thread."""

    def record(self, conn: Connection, items: list[Inbound]) -> set[DestinationKey]:
        """Write the deliveries, keys and flags of ``items`` (stored, settled, in ``conn``'s
        transaction); the destinations that got queued deliveries."""
        ...


# Called after each commit that stored messages: the destinations given queued deliveries,
# and whether some message was left ``received`` for the processor.
CommitHook = Callable[[set[DestinationKey], bool], None]


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the store committed: the answer to send, and the original for a duplicate."""

    uuid: str
    ack: bytes | None
    duplicate_of: str | None = None


class StoreUnavailable(Exception):
    """The store could not commit; the sender must get a negative answer and retry."""


@dataclass(slots=True)
class _Pending:
    item: Inbound
    waiter: asyncio.Future[Receipt] | Future[Receipt]
    loop: asyncio.AbstractEventLoop | None


@dataclass(slots=True)
class _Job:
    work: Callable[[Connection], Any]
    waiter: Future[Any]
    patient: bool = False  # background work that may wait a moment to share a commit


class GroupCommitWriter:
    """One thread that commits batches of inbound messages and answers their waiters."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 1000,
        on_commit: CommitHook | None = None,
        share_wait: float = 0.002,
        settler: Settler | None = None,
    ) -> None:
        self._store = store
        self.settler = settler
        self._max_batch = max_batch
        self._share_wait = share_wait
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tie-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self._close(broken=False)

    async def submit(self, item: Inbound) -> Receipt:
        """Commit ``item``; raises StoreUnavailable when the store cannot."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Receipt] = loop.create_future()
        self._decide(item)
        self._queue.put(_Pending(item, waiter, loop))
        return await waiter

    def submit_sync(self, item: Inbound) -> Receipt:
        """The same, for callers on ordinary threads."""
        waiter: Future[Receipt] = Future()
        self._decide(item)
        self._queue.put(_Pending(item, waiter, None))
        return waiter.result()

    def _decide(self, item: Inbound) -> None:
        """Let the settler decide ``item``'s outcome in the submitter's thread, where it
        overlaps the writer's fsync; if it fails, the processor decides later as before."""
        if self.settler is None:
            return
        try:
            self.settler.decide(item)
        except Exception:
            log.exception("deciding message %s on receipt failed; the processor will", item.uuid)
            item.outcome = None

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work(conn)`` inside the next group commit; its result once committed.

        For the process's other writers on SQLite (processor, dispatcher): they share
        ingest's transaction and fsync instead of committing on their own and holding
        the one write lock while senders wait for their ACKs. ``work`` runs in a
        savepoint, so one that fails is rolled back alone and raises here; the rest of
        the batch is still committed. Found alone, ``work`` waits up to ``share_wait`` for
        a message to share the commit with: committed on its own, it would cost an fsync
        and hold up the next sender behind it.
        """
        waiter: Future[T] = Future()
        self._queue.put(_Job(work, waiter, patient=True))
        return waiter.result()

    def run_soon(self, work: Callable[[Connection], T]) -> Future[T]:
        """Like ``run`` without waiting, and committed at once: a future of the result
        (``asyncio.wrap_future`` awaits it).

        For the HTTP sources, which wait on the event loop rather than in a thread.
        """
        waiter: Future[T] = Future()
        self._queue.put(_Job(work, waiter))
        return waiter

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Pending | _Job] = [first]
            stop = self._drain(batch)
            if not stop and all(isinstance(b, _Job) and b.patient for b in batch):
                try:
                    nxt = self._queue.get(timeout=self._share_wait)
                except queue.Empty:
                    pass
                else:
                    stop = nxt is _STOP or self._drain(batch, nxt)
            pending = [p for p in batch if isinstance(p, _Pending)]
            jobs = [j for j in batch if isinstance(j, _Job)]
            touched: set[DestinationKey] = set()
            try:
                receipts, done, touched = self._write([p.item for p in pending], jobs)
                results: list[Receipt | BaseException] = list(receipts)
            except Exception as exc:
                log.error("store commit failed for %d message(s): %s", len(pending), exc)
                error = StoreUnavailable(f"store unavailable: {type(exc).__name__}")
                results, done = [error] * len(pending), [error] * len(jobs)
            _answer(pending, results)
            for job, outcome in zip(jobs, done, strict=True):
                if isinstance(outcome, BaseException):
                    job.waiter.set_exception(outcome)
                else:
                    job.waiter.set_result(outcome)
            if self._on_commit is not None and any(isinstance(r, Receipt) for r in results):
                unsettled = any(
                    p.item.status == "received" and p.item.outcome is None for p in pending
                )
                try:
                    self._on_commit(touched, unsettled)
                except Exception:
                    log.exception("commit hook failed; the writer carries on")
            if stop:
                return

    def _drain(self, batch: list[_Pending | _Job], *first: Any) -> bool:
        """Add ``first`` and whatever is waiting to ``batch``; whether a stop was found."""
        batch.extend(first)
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is _STOP:
                return True
            batch.append(nxt)
        return False

    def _write(
        self, items: list[Inbound], jobs: list[_Job]
    ) -> tuple[list[Receipt], list[Any], set[DestinationKey]]:
        if self._conn is None:
            self._conn = self._store.writer.connect()
        try:
            with self._store.begin_on(self._conn) as conn:
                _hold_paused(conn, items)
                receipts = write_inbound(conn, items)
                touched = self._record(conn, [i for i in items if i.outcome is not None])
                return receipts, [_run_job(conn, job) for job in jobs], touched
        except Exception:
            self._close(broken=True)  # the next batch opens a new connection
            raise

    def _record(self, conn: Connection, settled: list[Inbound]) -> set[DestinationKey]:
        """The settler's writes for messages stored settled, in a savepoint: if they fail,
        those messages go back to ``received`` for the processor, and the batch (whose
        senders wait for their ACK) still commits."""
        if not settled or self.settler is None:
            return set()
        try:
            with savepoint(conn, "tie_settle"):
                return self.settler.record(conn, settled)
        except Exception:
            log.exception("writing %d settled message(s) failed; the processor will", len(settled))
            _unsettle(conn, settled)
            return set()

    def _close(self, *, broken: bool) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            if broken:
                conn.invalidate()
            conn.close()


def _run_job(conn: Connection, job: _Job) -> Any:
    """The job's result, or the exception it raised (its savepoint rolled back)."""
    try:
        with savepoint(conn, "tie_job"):
            return job.work(conn)
    except Exception as exc:
        return exc


def _hold_paused(conn: Connection, items: list[Inbound]) -> None:
    """A paused channel's messages stay ``received`` whatever was decided for them: the
    processor takes them when the channel resumes."""
    if not any(i.outcome is not None for i in items):
        return
    if conn.dialect.name == "sqlite":
        paused = {r[0] for r in conn.connection.driver_connection.execute(_PAUSED_SQL)}
    else:
        paused = set(conn.scalars(_PAUSED))
    if paused:
        for item in items:
            if item.channel in paused:
                item.outcome = None


def _unsettle(conn: Connection, items: list[Inbound]) -> None:
    conn.execute(
        messages.update()
        .where(messages.c.uuid.in_([i.uuid for i in items]))
        .values(status="received", error=None, processed_at=None)
    )
    for item in items:
        item.outcome = None


def write_inbound(conn: Connection, items: list[Inbound]) -> list[Receipt]:
    """Insert ``items`` in one transaction, recognising repeats (idempotent receiver).

    An item with an ``outcome`` is stored with it (settled), unless it is a duplicate.
    """
    receipts: list[Receipt] = []
    rows: list[dict[str, Any]] = []
    late: list[tuple[dict[str, Any], str]] = []
    first_in_batch: dict[tuple[str, str | None, str], Inbound] = {}
    for item in items:
        row = _row(item)
        original = _find_original(conn, item, first_in_batch)
        if original is None:
            rows.append(row)
            receipts.append(Receipt(item.uuid, item.ack))
            continue
        original_uuid, original_id, original_ack = original
        item.outcome = None
        row.update(
            status="filtered",
            processed_at=utcnow(),
            ack=original_ack,
            error=f"duplicate of {original_uuid}: MSH-10 {item.control_id!r} "
            f"from {item.sender or 'unknown sender'} already received",
        )
        if original_id is None:
            late.append((row, original_uuid))
        else:
            row["duplicate_of"] = original_id
            rows.append(row)
        receipts.append(Receipt(item.uuid, original_ack, duplicate_of=original_uuid))
    if rows:
        insert_rows(conn, messages, rows)
    for row, original_uuid in late:
        row["duplicate_of"] = conn.scalar(
            select(messages.c.id).where(messages.c.uuid == original_uuid)
        )
        conn.execute(_INSERT, row)
    metrics.count_messages(_counted([*rows, *(row for row, _ in late)]))
    return receipts


def _find_original(
    conn: Connection, item: Inbound, first_in_batch: dict[tuple[str, str | None, str], Inbound]
) -> tuple[str, int | None, bytes | None] | None:
    if not item.idempotency_window or not item.control_id or item.status != "received":
        return None
    key = (item.channel, item.sender, item.control_id)
    earlier = first_in_batch.get(key)
    if earlier is not None:
        return earlier.uuid, None, earlier.ack
    m = messages.c
    found = conn.execute(
        select(m.uuid, m.id, m.ack)
        .where(
            m.channel == item.channel,
            m.sender == _fit(item.sender, 255),
            m.control_id == _fit(item.control_id, 199),
            m.received_at >= item.received_at - timedelta(seconds=item.idempotency_window),
            m.duplicate_of.is_(None),
            m.status != "error",
        )
        .order_by(m.id)
        .limit(1)
    ).first()
    if found is None:
        first_in_batch[key] = item
        return None
    return found.uuid, found.id, found.ack


def _row(item: Inbound) -> dict[str, Any]:
    body = as_payload(item.raw)
    outcome = item.outcome
    if outcome is not None:
        status, error, processed_at = outcome.status, outcome.reason, utcnow()
    else:
        status, error = item.status, item.error
        processed_at = item.received_at if item.status != "received" else None
    return {
        "uuid": item.uuid,
        "channel": item.channel,
        "received_at": item.received_at,
        "status": status,
        "content_type": item.content_type,
        "message_type": _fit(item.message_type, 64),
        "control_id": _fit(item.control_id, 199),
        "sender": _fit(item.sender, 255),
        "size": body.size,
        "raw": body.inline,
        "blob_sha256": body.sha256 if body.is_blob else None,
        "source": _source_json(item.source) if item.source else None,
        "ack": item.ack,
        "error": error,
        "processed_at": processed_at,
        "duplicate_of": None,
        "origin_delivery_id": item.origin_delivery_id,
    }


def _source_json(source: dict[str, Any]) -> str:
    """The source metadata as JSON; a flat one (an MLLP connection's: protocol and peer, the
    same for each of its messages) is serialised once and remembered."""
    try:
        return _flat_json(tuple(source.items()))
    except TypeError:  # nested values: not hashable
        return json.dumps(source)


@functools.lru_cache(maxsize=1024)
def _flat_json(pairs: tuple[tuple[str, Any], ...]) -> str:
    return json.dumps(dict(pairs))


def _fit(value: str | None, size: int) -> str | None:
    """Senders choose header values: fit them to the column so one cannot fail a batch."""
    return value[:size] if value else value


def _answer(batch: list[_Pending], results: list[Receipt | BaseException]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Receipt | BaseException]]] = {}
    for pending, result in zip(batch, results, strict=True):
        if pending.loop is None:
            future: Future[Receipt] = pending.waiter  # type: ignore[assignment]
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        else:
            by_loop.setdefault(pending.loop, []).append((pending.waiter, result))
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, answers)
        except RuntimeError:
            log.warning("event loop closed before %d answer(s) could be given", len(answers))


def _settle(answers: list[tuple[asyncio.Future[Receipt], Receipt | BaseException]]) -> None:
    for waiter, result in answers:
        if waiter.done():
            continue
        if isinstance(result, BaseException):
            waiter.set_exception(result)
        else:
            waiter.set_result(result)


def _counted(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(channel, status) for the metrics: every row is received; a reject is an error, a
    duplicate filtered, as well."""
    for row in rows:
        yield row["channel"], "received"
        if row["status"] != "received":
            yield row["channel"], row["status"]
