"""Group commit: every received message is committed before its sender is answered.

Sources hand messages to one writer thread. The writer takes everything that is
waiting, writes it in one transaction and answers all the waiters together, so
many concurrent connections share one fsync instead of paying one each
(DESIGN.md §3.1 and §3.6). The idempotent receiver check runs inside that same
transaction (``write_inbound``, router.store.inbound), so two copies of one message
can never both be accepted.

A ``Settler`` (the processor) may decide a message's outcome as it is submitted, when
its channel runs no mapping: the message is then written already settled, with its
deliveries and keys, in the transaction that stores it (DESIGN.md §3.2 holds a
fortiori), and no processor round has to read it back and update it.

A peer that waits for each answer before it sends again (MLLP) sends again as soon as a
commit answers it. With several such peers, those answered by one commit would miss the
next, which began with whoever arrived meanwhile: the peers split into groups that take
turns, each waiting out the other's commit. So a commit that begins without some of the
peers the last one answered stays open a moment (``regather``, counted from that answer)
and writes what they send as it comes: one commit, with its fsync and its fixed costs,
for all of them. Only peers and background jobs are held so; a message of no peer (HTTP,
files, MESH) ends the wait.

A body above the blob threshold (``blobs.threshold``, 1 MiB) goes to the blob store as it is
submitted, whichever source sent it (router.store.placement, which the paths that write
without the writer use too): hashed, written and fsynced in the submitter's thread
(a worker thread for ``submit``, which must leave the event loop free), so that the blob is
durable before the row that names it commits, and that row, then a few hundred bytes, costs
the commit every other sender waits for no more than any other. Inline, a 9 MB body held up
that commit, and the processor then read it back and rewrote it holding the interpreter
lock (docs/performance.md).

Should the writer's thread die (a bug: an exception its commit's handling does not catch),
everyone it had taken and not answered, and everyone who submits afterwards, is refused at
once with ``StoreUnavailable``, as when the store cannot commit: senders get their negative
answer (MLLP AE, HTTP 503) instead of waiting for one that never comes. It is not restarted:
what killed it is unknown and may kill it again at once, and whether its last batch was
committed is unknown; /health says 503 and the engine is restarted, as for the processor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection

from router import metrics
from router.outage_log import OutageLog
from router.store.answers import answer, resolve
from router.store.database import Store, StoreUnavailable, is_connection_problem, savepoint
from router.store.inbound import Inbound, Receipt, release_validated, write_inbound
from router.store.placement import placed, placed_off_loop
from router.store.settled import hold_back, unsettle

log = logging.getLogger(__name__)
_STOP = object()
T = TypeVar("T")
DestinationKey = tuple[str, str]


class Settler(Protocol):
    """Decides outcomes as messages are submitted and writes what they imply."""

    def decide(self, item: Inbound) -> None:
        """Set ``item.outcome`` when it can be decided now; runs in the submitter's thread."""

    def record(self, conn: Connection, items: list[Inbound]) -> set[DestinationKey]:
        """Write the deliveries, keys and flags of ``items`` (stored, settled, in ``conn``'s
        transaction); the destinations that got queued deliveries."""


# Called after each commit that stored messages: the destinations given queued deliveries,
# and whether some message was left ``received`` for the processor.
CommitHook = Callable[[set[DestinationKey], bool], None]


@dataclass(slots=True)
class _Pending:
    item: Inbound
    waiter: asyncio.Future[Receipt] | Future[Receipt]
    loop: asyncio.AbstractEventLoop | None
    peer: Hashable | None = None


@dataclass(slots=True)
class _Release:
    item: Inbound
    waiter: Future[bool]


@dataclass(slots=True)
class _Job:
    work: Callable[[Connection], Any]
    waiter: Future[Any]
    patient: bool = False  # background work that may wait a moment to share a commit


@dataclass(slots=True)
class _Round:
    """One transaction's work so far, and what it came to: answered once it commits."""

    pending: list[_Pending] = field(default_factory=list)
    jobs: list[_Job] = field(default_factory=list)
    releases: list[_Release] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    done: list[Any] = field(default_factory=list)
    released: list[bool] = field(default_factory=list)
    touched: set[DestinationKey] = field(default_factory=set)

    def add(self, batch: list[_Pending | _Job | _Release]) -> _Batch:
        """Take ``batch`` in (its waiters are answered with the round, even if writing it
        fails); its parts, to write."""
        part = _Batch(
            [p for p in batch if isinstance(p, _Pending)],
            [j for j in batch if isinstance(j, _Job)],
            [r for r in batch if isinstance(r, _Release)],
        )
        self.pending += part.pending
        self.jobs += part.jobs
        self.releases += part.releases
        return part

    @property
    def may_wait(self) -> bool:
        """Whether everyone it answers may wait for peers to come back: other peers and
        background jobs, but no sender that is not about to send again itself."""
        return (
            not self.releases
            and all(p.peer is not None for p in self.pending)
            and all(j.patient for j in self.jobs)
        )


@dataclass(slots=True)
class _Batch:
    pending: list[_Pending]
    jobs: list[_Job]
    releases: list[_Release]


class GroupCommitWriter:
    """One thread that commits batches of inbound messages and answers their waiters."""

    def __init__(
        self,
        store: Store,
        *,
        max_batch: int = 1000,
        on_commit: CommitHook | None = None,
        share_wait: float = 0.002,
        regather: float = 0.001,
        settler: Settler | None = None,
    ) -> None:
        self._store = store
        self.settler = settler
        self._max_batch = max_batch
        self._share_wait = share_wait
        self._regather = regather
        self._answered: set[Hashable] = set()  # peers the last commit answered
        self._answered_at = 0.0
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        # The lists the current round takes the queue's entries into: what it must refuse
        # if it dies before answering them. Once dead, every later entry is refused.
        self._held: list[list[_Pending | _Job | _Release]] = []
        self._dead = False
        # Whether the last commit failed. A store that answers reads but takes no writes
        # (disk full, a read-only file) answers /health's SELECT 1: this is what says so.
        self.failing = False
        # A store that cannot commit (down, full) is logged when it starts, with a count
        # every few minutes and when it ends: senders retrying at once after their AE made
        # a multi-line entry each, some 80,000 lines a minute from one sender.
        self._outage = OutageLog(log, "store commit")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tie-ingest", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer's thread runs: without it nothing is stored, and every sender
        is refused."""
        return not self._dead and self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self._close(broken=False)

    async def submit(self, item: Inbound, *, peer: Hashable | None = None) -> Receipt:
        """Commit ``item``; raises StoreUnavailable when the store cannot.

        ``peer`` names a sender that sends its next message once answered (an MLLP
        connection): the next commit may wait a moment for it (``regather``). A large body
        is written to the blob store first, in a worker thread.
        """
        loop = asyncio.get_running_loop()
        item.raw = await placed_off_loop(self._store.blobs, item.raw)
        waiter: asyncio.Future[Receipt] = loop.create_future()
        self._decide(item)
        self._put(_Pending(item, waiter, loop, peer))
        return await waiter

    def submit_sync(self, item: Inbound) -> Receipt:
        """The same, for callers on ordinary threads (a large body is written to the blob
        store in this one)."""
        item.raw = placed(self._store.blobs, item.raw)
        waiter: Future[Receipt] = Future()
        self._decide(item)
        self._put(_Pending(item, waiter, None))
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

    def release(self, item: Inbound, rejected: str | None = None) -> Future[bool]:
        """Settle a message stored ``validating`` once its checks are done: it becomes
        ``received`` (or is settled now, when the settler can decide it), or ``error`` with
        ``rejected`` as its reason, in the next group commit. A future of whether the row
        was still ``validating`` (another node's recovery may have taken it)."""
        if rejected is None:
            item.status, item.error = "received", None
            self._decide(item)
        else:
            item.status, item.error, item.outcome = "error", rejected, None
        waiter: Future[bool] = Future()
        self._put(_Release(item, waiter))
        return waiter

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
        self._put(_Job(work, waiter, patient=True))
        return waiter.result()

    def run_soon(self, work: Callable[[Connection], T]) -> Future[T]:
        """Like ``run`` without waiting, and committed at once: a future of the result
        (``asyncio.wrap_future`` awaits it).

        For the HTTP sources, which wait on the event loop rather than in a thread.
        """
        waiter: Future[T] = Future()
        self._put(_Job(work, waiter))
        return waiter

    def _put(self, entry: _Pending | _Job | _Release) -> None:
        """Queue ``entry`` for the writer; refused at once if it died. Checked after the put:
        the dying writer marks itself dead before it empties the queue, so an entry is
        either emptied by it or sees the mark and empties the queue itself."""
        self._queue.put(entry)
        if self._dead:
            self._refuse_queued()

    def _run(self) -> None:
        try:
            self._batches()
        except BaseException:
            log.exception(
                "the group-commit writer stopped; nothing is stored until a restart, "
                "every sender is refused"
            )
            self._die()

    def _die(self) -> None:
        """Refuse whoever the writer took and did not answer, and whoever is queued."""
        self._dead = True
        self._close(broken=True)
        _refuse([entry for taken in self._held for entry in taken])
        self._held = []
        self._refuse_queued()

    def _refuse_queued(self) -> None:
        queued = []
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is not _STOP:  # stop() joins a thread that has ended already
                queued.append(entry)
        _refuse(queued)

    def _batches(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch: list[_Pending | _Job | _Release] = []
            self._held = [batch]
            stop = self._drain(batch, first)
            if not stop and all(isinstance(b, _Job) and b.patient for b in batch):
                try:
                    nxt = self._queue.get(timeout=self._share_wait)
                except queue.Empty:
                    pass
                else:
                    stop = nxt is _STOP or self._drain(batch, nxt)
            if self._commit(batch, stop):
                return

    def _commit(self, batch: list[_Pending | _Job | _Release], stop: bool) -> bool:
        """Write ``batch`` in one transaction, then, while the peers the last commit answered
        come back (``regather``), what they send as it comes; commit once and answer all.
        Whether a stop was found."""
        work = _Round()
        first = work.add(batch)
        flushed: float | None = None  # seconds the COMMIT took, once it succeeded
        try:
            if self._conn is None:
                self._conn = self._store.writer.connect()
            try:
                with self._store.begin_on(self._conn) as conn:
                    self._write(conn, first, work)
                    awaited = self._answered - {p.peer for p in first.pending}
                    while awaited and not stop and work.may_wait:
                        more, stop = self._next_of(awaited)
                        if not more:
                            break
                        self._write(conn, work.add(more), work)
                    committing = time.perf_counter()
            except Exception:
                self._close(broken=True)  # the next batch opens a new connection
                raise
            flushed = time.perf_counter() - committing
            self._outage.succeeded()
            self.failing = False
            results: list[Receipt | BaseException] = list(work.receipts)
            done, released = work.done, work.released
        except Exception as exc:
            if is_connection_problem(exc):
                self._outage.failed(exc)
            else:
                log.error("store commit failed for %s: %s", _described(work), exc)
            self.failing = True
            error = StoreUnavailable(f"store unavailable: {type(exc).__name__}")
            results, done = [error] * len(work.pending), [error] * len(work.jobs)
            released = [error] * len(work.releases)
            work.touched = set()
        self._finish(work, results, done, released)
        self._held = []
        if flushed is not None:  # measured after the waiters are answered, not before
            _observe(flushed, len(work.pending) + len(work.releases))
        return stop

    def _finish(
        self,
        work: _Round,
        results: list[Receipt | BaseException],
        done: list[Any],
        released: list[Any],
    ) -> None:
        """Answer everyone ``work`` took in, remember the peers answered, and tell the
        commit hook what was stored."""
        answer([(p.waiter, p.loop) for p in work.pending], results)
        self._answered = {p.peer for p in work.pending if p.peer is not None}
        self._answered_at = time.monotonic()
        for waiter, outcome in zip(
            [*(j.waiter for j in work.jobs), *(r.waiter for r in work.releases)],
            [*done, *released],
            strict=True,
        ):
            resolve(waiter, outcome)
        stored = any(isinstance(r, Receipt) for r in results) or any(r is True for r in released)
        if self._on_commit is not None and stored:
            unsettled = any(
                i.status == "received" and i.outcome is None
                for i in [*(p.item for p in work.pending), *(r.item for r in work.releases)]
            )
            try:
                self._on_commit(work.touched, unsettled)
            except Exception:
                log.exception("commit hook failed; the writer carries on")

    def _drain(self, batch: list[_Pending | _Job | _Release], *first: Any) -> bool:
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

    def _next_of(self, awaited: set[Hashable]) -> tuple[list[_Pending | _Job | _Release], bool]:
        """What is waiting, or once something comes unless ``regather`` has passed since the
        last answer first (nothing then), and whether a stop was found. The peers found are
        no longer ``awaited``. A peer that went quiet costs one wait, once: the commit that
        waited for it did not answer it."""
        timeout = self._answered_at + self._regather - time.monotonic()
        try:
            nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return [], False
        if nxt is _STOP:
            return [], True
        more: list[_Pending | _Job | _Release] = []
        self._held.append(more)
        stop = self._drain(more, nxt)
        awaited.difference_update(p.peer for p in more if isinstance(p, _Pending))
        return more, stop

    def _write(self, conn: Connection, batch: _Batch, work: _Round) -> None:
        """Write ``batch`` in ``conn``'s transaction, adding what it came to to ``work``."""
        items, validated = [p.item for p in batch.pending], [r.item for r in batch.releases]
        hold_back(conn, [*items, *validated])
        work.receipts += write_inbound(conn, items)
        released = release_validated(conn, validated)
        work.released += released
        settled = [i for i in items if i.outcome is not None] + [
            i for i, done in zip(validated, released, strict=True) if done and i.outcome
        ]
        work.touched |= self._record(conn, settled)
        work.done += [_run_job(conn, job) for job in batch.jobs]

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
            unsettle(conn, settled)
            return set()

    def _close(self, *, broken: bool) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            if broken:
                conn.invalidate()
            conn.close()


def _refuse(entries: list[_Pending | _Job | _Release]) -> None:
    """Answer every waiter of ``entries`` not answered yet with ``StoreUnavailable``."""
    error = StoreUnavailable("store unavailable: the writer stopped")
    pending = [e for e in entries if isinstance(e, _Pending)]
    answer([(p.waiter, p.loop) for p in pending], [error] * len(pending))
    for entry in entries:
        if not isinstance(entry, _Pending):
            resolve(entry.waiter, error)


def _described(work: _Round) -> str:
    """What a failed commit was writing, for its log line: messages, other work, or both."""
    parts = []
    if work.pending or work.releases:
        parts.append(f"{len(work.pending) + len(work.releases)} message(s)")
    if work.jobs:
        parts.append(f"{len(work.jobs)} other write(s) (processing, dispatch, HTTP exchanges)")
    return " and ".join(parts)


def _observe(seconds: float, messages: int) -> None:
    metrics.GROUP_COMMIT.observe(seconds)
    if messages:
        metrics.GROUP_COMMIT_MESSAGES.observe(messages)


def _run_job(conn: Connection, job: _Job) -> Any:
    """The job's result, or the exception it raised (its savepoint rolled back)."""
    try:
        with savepoint(conn, "tie_job"):
            return job.work(conn)
    except Exception as exc:
        return exc
