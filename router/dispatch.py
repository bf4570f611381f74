"""The dispatcher: claims due deliveries with a lease, sends them and records every attempt.

Delivery is at least once (DESIGN.md §3.3): a lease that expires makes a
delivery due again; while a round sends, its leases are renewed
(router.lease_keeper), so only a node that died or stalled loses them. Ordered
destinations (§3.4) send one lane at a time in receive order; a lane is one
ordering key, so different keys flow in parallel and a failing head holds back
only its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from router import metrics
from router.config import DestinationConfig, DispatchOptions
from router.connectors import Delivery, Sender, SendResult
from router.delivery_log import DeliveryLog
from router.lease_keeper import LeaseKeeper
from router.outage_log import OutageLog
from router.pipeline import CompiledChannel
from router.store.database import Store, Transact
from router.store.deliveries import (
    Attempt,
    Claimed,
    ClaimRequest,
    OnSettled,
    claim_next,
    record,
    record_then_claim,
    release_owned,
    renew,
)
from router.store.inbound import utcnow
from router.store.interruptible import STOP_GRACE, Interruptible

log = logging.getLogger(__name__)
SenderFactory = Callable[[str, str, DestinationConfig], Sender]
T = TypeVar("T")
# After a round that did not fill its claim (it took all that was due) and was not woken
# while it sent, wait this long, or until woken, before claiming again: one claim then covers
# what arrived meanwhile, instead of an empty claim at once.
LINGER = 0.01


class DestinationWorker:
    """Sends one destination's deliveries; one pool of senders shared by its lanes."""

    def __init__(
        self,
        store: Store,
        channel: str,
        name: str,
        config: DestinationConfig,
        make_sender: SenderFactory,
        options: DispatchOptions,
        owner: str,
        transact: Transact[Any] | None = None,
        on_settled: OnSettled | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self.channel, self.name, self.config = channel, name, config
        self._store = store
        self._stop_grace = stop_grace
        self._on_settled = on_settled
        self._options = options
        self._owner = owner
        # Without a transact of the caller's (PostgreSQL), the worker's own transactions,
        # whose statements a stop can cancel.
        interruptible = None if transact else Interruptible(store)
        self._interrupt = interruptible.cancel if interruptible else None
        self._transact = transact or interruptible
        self._wake = asyncio.Event()
        self._stopping = False
        self._delivery_log = DeliveryLog(log, channel, name)
        lanes = options.lanes if (config.order_by or not config.is_ordered) else 1
        self._senders = [make_sender(channel, name, config) for _ in range(lanes)]
        self._request = ClaimRequest(
            channel, name, config.is_ordered, lanes, options.batch, options.lease, owner
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        claimed: Claimed | None = None  # a round the last one claimed, to send first
        failures = OutageLog(log, f"dispatch for {self.channel}/{self.name}")
        while claimed is not None or not self._stopping:
            try:
                wait, claimed = await self._round(claimed, go_on=True)
                failures.succeeded()
            except Exception as exc:
                failures.failed(exc)
                wait, claimed = self._options.poll_interval, None
            if claimed is None and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait or LINGER)
                self._wake.clear()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for sender in self._senders:
            await sender.close()

    async def finish(self, task: asyncio.Task[None]) -> None:
        """Stop after the round in hand (its sends complete and are recorded), for a reload.

        A store call of the round stuck in its statement (behind a lock) is cancelled after
        the stop grace, as on stop, else the reload waits as long: the round then fails,
        and what it sent unrecorded is sent again once its leases end."""
        self._stopping = True
        self._wake.set()
        while not task.done():
            await asyncio.wait([task], timeout=self._stop_grace if self._interrupt else None)
            if not task.done() and self._interrupt and await asyncio.to_thread(self._interrupt):
                log.warning(
                    "reload: a store call of %s/%s still ran after %.0f s; its statement is "
                    "cancelled",
                    self.channel,
                    self.name,
                    self._stop_grace,
                )
        await asyncio.gather(task, return_exceptions=True)
        for sender in self._senders:
            await sender.close()

    async def run_once(self) -> float:
        """Claim, send and record one round; returns how long to wait before the next."""
        wait, _ = await self._round(None, go_on=False)
        return wait

    async def _round(self, claimed: Claimed | None, *, go_on: bool) -> tuple[float, Claimed | None]:
        """Send a round (claimed now, or by the round before) and record it: how long to wait
        before the next claim, and the next round when it was claimed already.

        With ``go_on``, when more is probably due (the claim was full, or new deliveries
        came in meanwhile), the round's record and the next claim share one transaction: one
        commit, and on SQLite one writer job, instead of two.
        """
        if claimed is None:
            claimed = await self._claim()
        if not claimed.lanes:
            return _seconds_until(claimed.next_due, self._options.poll_interval), None
        attempts = await self._send(claimed)
        more = self._wake.is_set() or self._took_all_it_could(claimed)
        following = await self._record(attempts, claimed.all_ids, then_claim=go_on and more)
        return 0.0, following

    async def _claim(self) -> Claimed:
        return await _store_work(
            claim_next,
            self._store,
            self._request,
            transact=self._transact,
            interrupt=self._interrupt,
            grace=self._stop_grace,
        )

    async def _send(self, claimed: Claimed) -> list[Attempt]:
        """Send the lanes side by side, each on a sender of the pool, keeping their leases."""
        idle: asyncio.Queue[Sender] = asyncio.Queue()
        for sender in self._senders:
            idle.put_nowait(sender)
        async with LeaseKeeper(claimed.all_ids, self._options.lease / 3, self._renew) as leases:
            results = await asyncio.gather(
                *(self._send_lane(lane, idle, leases) for lane in claimed.lanes)
            )
        return [a for lane in results for a in lane]

    async def _renew(self, ids: list[int]) -> set[int]:
        return await _store_work(
            renew,
            self._store,
            ids,
            lease=self._options.lease,
            owner=self._owner,
            transact=self._transact,
            interrupt=self._interrupt,
            grace=self._stop_grace,
        )

    async def _record(
        self, attempts: list[Attempt], claimed: list[int], *, then_claim: bool
    ) -> Claimed | None:
        """Record the round's attempts; with ``then_claim`` (unless stopping), claim the next
        round in the same transaction and return it."""
        retry = self.config.retry
        following = None
        if then_claim and not self._stopping:
            self._wake.clear()  # the claim sees all that was committed before this
            outcomes, following = await _store_work(
                record_then_claim,
                self._store,
                attempts,
                retry,
                claimed,
                self._request,
                transact=self._transact,
                interrupt=self._interrupt,
                grace=self._stop_grace,
                on_settled=self._on_settled,
            )
        else:
            outcomes = await _store_work(
                record,
                self._store,
                attempts,
                retry,
                claimed,
                owner=self._owner,
                transact=self._transact,
                interrupt=self._interrupt,
                grace=self._stop_grace,
                on_settled=self._on_settled,
            )
        metrics.count_deliveries(self.channel, self.name, outcomes)
        self._delivery_log.recorded(zip(attempts, outcomes, strict=True))
        return following

    def _took_all_it_could(self, claimed: Claimed) -> bool:
        """Whether the claim was limited by its size: then more is probably due already."""
        if not self.config.is_ordered:
            return len(claimed.all_ids) >= self._options.batch
        per_lane = max(1, self._options.batch // len(self._senders))
        return any(len(lane) >= per_lane for lane in claimed.lanes)

    async def _send_lane(
        self, lane: list[Delivery], idle: asyncio.Queue[Sender], leases: LeaseKeeper
    ) -> list[Attempt]:
        sender = await idle.get()
        done: list[Attempt] = []
        try:
            for delivery in lane:
                if delivery.id not in leases.held:
                    break
                started = utcnow()
                t0 = time.perf_counter()
                try:
                    result = await sender.send(delivery)
                except Exception as exc:
                    log.exception("sender for %s/%s raised", self.channel, self.name)
                    result = SendResult("retry", error=f"{type(exc).__name__}: {exc}")
                done.append(Attempt(delivery, result, started, (time.perf_counter() - t0) * 1000))
                if result.outcome != "sent" and self.config.is_ordered:
                    break
        finally:
            idle.put_nowait(sender)
        return done


class Dispatcher:
    """One worker per destination of every channel; woken when the processor queues work.

    ``on_settled`` is told, in the same transaction, of deliveries sent or failed for good.
    ``stop_grace``: how long a stop or reload waits for a worker's store call in hand before
    it cancels the call's statement (PostgreSQL)."""

    def __init__(
        self,
        store: Store,
        channels: dict[str, CompiledChannel],
        make_sender: SenderFactory,
        options: DispatchOptions,
        owner: str,
        transact: Transact[Any] | None = None,
        on_settled: OnSettled | None = None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._store = store
        self._on_settled = on_settled
        self._stop_grace = stop_grace
        self._owner = owner
        self._make_sender = make_sender
        self._options = options
        self._transact = transact
        self.workers = {
            (channel.name, route.name): self._worker(channel.name, route.name, route.config)
            for channel in channels.values()
            for route in channel.routes
        }
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    @property
    def alive(self) -> bool:
        """Whether every worker runs: a worker's task ends only when it is stopped or
        replaced, so one that ended else died, and its destination gets nothing sent
        (/health says so)."""
        return self._loop is not None and not any(t.done() for t in self._tasks.values())

    async def start(self) -> None:
        """Take back this node's leases from before a restart, then start the workers."""
        released = await asyncio.to_thread(release_owned, self._store, self._owner)
        if released:
            log.info("released %d delivery lease(s) held by this node before restart", released)
        self._loop = asyncio.get_running_loop()
        self._tasks = {key: self._run(key, worker) for key, worker in self.workers.items()}

    async def update(self, channels: dict[str, CompiledChannel]) -> None:
        """Reload: a worker whose destination changed or went away finishes its round and
        stops; a new or changed destination gets a new worker. Others carry on untouched."""
        wanted = {(c.name, r.name): r.config for c in channels.values() for r in c.routes}
        for key, worker in list(self.workers.items()):
            if wanted.get(key) != worker.config:
                del self.workers[key]
                await worker.finish(self._tasks.pop(key))
        for key, config in wanted.items():
            if key not in self.workers:
                worker = self.workers[key] = self._worker(*key, config)
                self._tasks[key] = self._run(key, worker)

    def _run(self, key: tuple[str, str], worker: DestinationWorker) -> asyncio.Task[None]:
        task = asyncio.create_task(worker.run(), name=f"dispatch {key}")
        task.add_done_callback(functools.partial(self._ended, key))
        return task

    def _ended(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        """Log a worker that died: its round catches every ``Exception``, so only a
        ``BaseException`` or a cancellation from outside ends it before it is stopped."""
        if self._stopping or self._tasks.get(key) is not task:
            return  # stopped, or replaced by a reload
        error = None if task.cancelled() else task.exception()
        log.error(
            "the dispatch worker for %s/%s stopped (%s); nothing is sent there until a restart",
            *key,
            "cancelled" if error is None else type(error).__name__,
            exc_info=error,
        )

    def _worker(
        self, channel: str, destination: str, config: DestinationConfig
    ) -> DestinationWorker:
        return DestinationWorker(
            self._store,
            channel,
            destination,
            config,
            self._make_sender,
            self._options,
            self._owner,
            self._transact,
            self._on_settled,
            self._stop_grace,
        )

    async def stop(self) -> None:
        self._stopping = True
        for worker in self.workers.values():
            await worker.stop()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def notify(self, keys: set[tuple[str, str]]) -> None:
        """Thread-safe: wake the workers of destinations that have new deliveries."""
        if self._loop is None:
            return
        workers = [self.workers[k] for k in keys if k in self.workers]
        if workers:
            self._loop.call_soon_threadsafe(lambda: [w.wake() for w in workers])


async def _store_work(
    work: Callable[..., T],
    *args: Any,
    interrupt: Callable[[], int] | None = None,
    grace: float = STOP_GRACE,
    **kwargs: Any,
) -> T:
    """``work`` in a thread; cancelled, it still waits for the thread before it gives way,
    so that no claim or record outlives the dispatcher's stop (and the store's close).
    With ``interrupt`` (which cancels the work's statement in flight), it waits
    ``grace`` at a time, interrupting the work after each."""
    thread = asyncio.ensure_future(asyncio.to_thread(work, *args, **kwargs))
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        while not thread.done():
            await asyncio.wait([thread], timeout=grace if interrupt else None)
            if not thread.done() and interrupt and await asyncio.to_thread(interrupt):
                log.warning(
                    "stopping: a store call still ran after %.0f s; its statement is cancelled",
                    grace,
                )
        if not thread.cancelled():
            thread.exception()  # the work's own error (an interrupted statement's) is moot
        raise


def _seconds_until(when: datetime | None, cap: float) -> float:
    if when is None:
        return cap
    return max(0.01, min(cap, (when - utcnow()) / timedelta(seconds=1)))
