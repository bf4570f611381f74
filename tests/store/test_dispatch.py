"""The delivery queue: leases, backoff, ordered lanes. The destination is an in-memory fake."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from store_testing import dead_writer, refused

from router import dispatch
from router.config import ChannelConfig, DestinationConfig, DispatchOptions, RetryPolicy
from router.connectors import Delivery, SendResult
from router.dispatch import DestinationWorker
from router.pipeline import compile_channel
from router.processing import Processor
from router.store.database import Store
from router.store.deliveries import (
    Attempt,
    Claimed,
    ClaimRequest,
    claim,
    record,
    record_then_claim,
    release_owned,
)
from router.store.inbound import utcnow
from router.store.ingest import GroupCommitWriter
from router.store.interruptible import STOP_GRACE
from router.store.schema import attempts, deliveries

d = deliveries.c
LAB = {"host": "127.0.0.1", "port": 2576}
SENT = SendResult("sent", response=b"MSA|AA")


class Downstream:
    """A fake receiver shared by all of a worker's senders: answers by rule, logs every send."""

    def __init__(self, answer: Callable[[Delivery], SendResult] = lambda _d: SENT) -> None:
        self.answer = answer
        self.log: list[Delivery] = []

    def control_ids(self) -> list[str | None]:
        return [x.idempotency_key for x in self.log]

    def sender(self, _channel: str, _name: str, _config: DestinationConfig) -> FakeSender:
        return FakeSender(self)


class FakeSender:
    def __init__(self, downstream: Downstream) -> None:
        self._downstream = downstream

    async def send(self, delivery: Delivery) -> SendResult:
        self._downstream.log.append(delivery)
        return self._downstream.answer(delivery)

    async def close(self) -> None:
        return None


def _queue(store: Store, receive: Any, er7: Any, destination: dict[str, Any], *msgs: Any) -> None:
    """Receive ``msgs`` ((control_id, patient) pairs) and process them into deliveries."""
    config = ChannelConfig.model_validate(
        {"name": "orders", "source": {"mllp": {"port": 0}}, "destinations": {"lab": destination}}
    )
    receive("orders", *(er7(cid, patient=patient) for cid, patient in msgs))
    assert Processor(store, {"orders": compile_channel(config)}).run_once() == len(msgs)


def _worker(
    store: Store,
    destination: dict[str, Any],
    downstream: Downstream | HeldSender,
    *,
    stop_grace: float = STOP_GRACE,
    **options: Any,
) -> DestinationWorker:
    config = DestinationConfig.model_validate(destination)
    dispatch = DispatchOptions.model_validate({"lease": "60s", "poll_interval": "1s", **options})
    return DestinationWorker(
        store,
        "orders",
        "lab",
        config,
        downstream.sender,
        dispatch,
        "node-a",
        stop_grace=stop_grace,
    )


def _round(worker: DestinationWorker) -> float:
    return asyncio.run(worker.run_once())


def _state(store: Store) -> dict[str, tuple[str, int]]:
    """Status and attempt count of each delivery, by its payload's MSH-10."""
    with store.read() as conn:
        rows = conn.execute(select(d.idempotency_key, d.status, d.attempts).order_by(d.id))
        return {r.idempotency_key: (r.status, r.attempts) for r in rows}


def _time_passes(store: Store) -> None:
    """Every retry and lease falls due, as if their times had come."""
    past = utcnow() - timedelta(seconds=1)
    with store.begin() as conn:
        conn.execute(update(deliveries).where(d.status == "retrying").values(next_attempt_at=past))
        conn.execute(update(deliveries).where(d.status == "sending").values(lease_until=past))


def _claim(store: Store, owner: str, *, ordered: bool = False) -> Claimed:
    return claim(
        store, "orders", "lab", ordered=ordered, lanes=4, limit=10, lease=60.0, owner=owner
    )


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
def test_a_leased_delivery_is_claimed_again_only_when_its_lease_expires(
    store, receive, er7, ordered
):
    _queue(store, receive, er7, {"mllp": LAB, "ordered": ordered}, ("ORD1", "P1"))

    first = _claim(store, "node-a", ordered=ordered)
    (delivery,) = [x for lane in first.lanes for x in lane]
    with store.read() as conn:
        row = conn.execute(select(deliveries).where(d.id == delivery.id)).one()
    assert (row.status, row.lease_owner) == ("sending", "node-a")

    meanwhile = _claim(store, "node-b", ordered=ordered)
    assert meanwhile.lanes == []
    assert meanwhile.next_due == row.lease_until

    _time_passes(store)
    again = _claim(store, "node-b", ordered=ordered)
    assert [x.id for lane in again.lanes for x in lane] == [delivery.id]
    assert again.lanes[0][0].attempts == 0
    with store.read() as conn:
        assert conn.scalar(select(d.lease_owner).where(d.id == delivery.id)) == "node-b"


def test_a_result_after_the_lease_ran_out_is_kept_but_settles_nothing(store, receive, er7):
    _queue(store, receive, er7, {"mllp": LAB}, ("ORD1", "P1"), ("ORD2", "P2"))
    late = _claim(store, "node-a")
    _time_passes(store)
    taken = _claim(store, "node-b")
    sent = [Attempt(x, SENT, utcnow(), 1.0) for lane in late.lanes for x in lane]
    assert len(sent) == 2

    record(store, sent, RetryPolicy(), late.all_ids, owner="node-a")
    assert _state(store) == {"ORD1": ("sending", 0), "ORD2": ("sending", 0)}
    record(store, sent[:1], RetryPolicy(), taken.all_ids, owner="node-b")
    assert _state(store) == {"ORD1": ("sent", 1), "ORD2": ("queued", 0)}
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(attempts)) == 3


def test_release_owned_frees_a_restarted_nodes_leases(store, receive, er7):
    _queue(store, receive, er7, {"mllp": LAB, "ordered": False}, ("ORD1", "P1"), ("ORD2", "P2"))
    assert len(_claim(store, "node-a").all_ids) == 2
    assert _claim(store, "node-b").lanes == []

    assert release_owned(store, "node-b") == 0
    assert set(_state(store).values()) == {("sending", 0)}
    assert release_owned(store, "node-a") == 2
    assert _state(store) == {"ORD1": ("queued", 0), "ORD2": ("queued", 0)}
    with store.read() as conn:
        assert conn.scalars(select(d.lease_owner)).all() == [None, None]
    assert len(_claim(store, "node-a").all_ids) == 2


def test_retries_back_off_exponentially_then_fail_with_every_attempt_recorded(store, receive, er7):
    destination = {"mllp": LAB, "retry": {"max_attempts": 4, "backoff": ["10s", "25s"]}}
    _queue(store, receive, er7, destination, ("ORD1", "P1"))
    lab = Downstream(lambda x: SendResult("retry", response=b"MSA|AE", error=f"AE #{len(lab.log)}"))
    worker = _worker(store, destination, lab)

    spacing = []
    for sends in range(1, 5):
        assert _round(worker) == 0.0
        assert len(lab.log) == sends
        with store.read() as conn:
            row = conn.execute(select(deliveries)).one()
        assert row.attempts == sends
        if row.status == "retrying":
            spacing.append(row.next_attempt_at - row.updated_at)
            assert _round(worker) > 0, "a retry must wait for its backoff"
            assert len(lab.log) == sends
            _time_passes(store)

    assert spacing == [timedelta(seconds=s) for s in (10, 20, 25)]
    assert (row.status, row.attempts) == ("failed", 4)
    with store.read() as conn:
        log = conn.execute(select(attempts).order_by(attempts.c.id)).all()
    assert [a.number for a in log] == [1, 2, 3, 4]
    assert [a.outcome for a in log] == ["retrying"] * 3 + ["failed"]
    assert [a.error for a in log] == ["AE #1", "AE #2", "AE #3", "AE #4"]
    assert {a.response for a in log} == {b"MSA|AE"}
    assert {a.delivery_id for a in log} == {row.id}
    assert _round(worker) > 0 and len(lab.log) == 4


def test_an_ordered_destination_sends_in_receive_order(store, receive, er7):
    msgs = [(f"ORD{n}", f"P{n % 3}") for n in range(7)]
    _queue(store, receive, er7, {"mllp": LAB}, *msgs)
    lab = Downstream()
    worker = _worker(store, {"mllp": LAB}, lab, batch=2)

    rounds = 0
    while _round(worker) == 0.0:
        rounds += 1
    assert rounds > 1, "the order must hold across rounds"
    assert lab.control_ids() == [cid for cid, _ in msgs]
    assert set(_state(store).values()) == {("sent", 1)}


def test_running_a_full_round_records_it_with_the_next_claim(store, receive, er7):
    msgs = [(f"ORD{n}", f"P{n}") for n in range(7)]
    _queue(store, receive, er7, {"mllp": LAB}, *msgs)
    transactions: list[object] = []

    def transact(work: Callable[[Any], Any]) -> Any:
        transactions.append(work)
        return store.run(work)

    async def run_until_all_sent() -> None:
        last = asyncio.Event()

        def answer(delivery: Delivery) -> SendResult:
            if delivery.idempotency_key == msgs[-1][0]:
                last.set()
            return SENT

        lab = Downstream(answer)
        config = DestinationConfig.model_validate({"mllp": LAB})
        options = DispatchOptions.model_validate({"lease": "60s", "batch": 2})
        worker = DestinationWorker(
            store, "orders", "lab", config, lab.sender, options, "node-a", transact
        )
        task = asyncio.create_task(worker.run())
        await last.wait()
        await worker.finish(task)
        assert lab.control_ids() == [cid for cid, _ in msgs]

    asyncio.run(run_until_all_sent())
    # Rounds of 2, 2, 2 and 1: one claim, three records that claim the next round, one record.
    assert len(transactions) == 5
    assert set(_state(store).values()) == {("sent", 1)}
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(attempts)) == len(msgs)


def test_a_round_is_recorded_even_when_claiming_the_next_one_fails(store, receive, er7):
    _queue(store, receive, er7, {"mllp": LAB, "ordered": False}, ("ORD1", "P1"), ("ORD2", "P2"))
    first = claim(store, "orders", "lab", ordered=False, lanes=1, limit=1, lease=60, owner="a")
    sent = [Attempt(x, SENT, utcnow(), 1.0) for lane in first.lanes for x in lane]
    request = ClaimRequest("orders", "lab", False, 1, 10, 60.0, "a")

    with refused(store, "deliveries", "NEW.status = 'sending'", on="UPDATE"):
        outcomes, following = record_then_claim(store, sent, RetryPolicy(), first.all_ids, request)

    assert (outcomes, following.lanes) == (["sent"], [])
    assert _state(store) == {"ORD1": ("sent", 1), "ORD2": ("queued", 0)}
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(attempts)) == 1


def test_a_retrying_head_blocks_an_ordered_destination(store, receive, er7):
    msgs = [(f"ORD{n}", f"P{n}") for n in range(4)]
    _queue(store, receive, er7, {"mllp": LAB}, *msgs)
    healthy = False
    lab = Downstream(
        lambda x: SENT if healthy or x.idempotency_key != "ORD0" else SendResult("retry")
    )
    worker = _worker(store, {"mllp": LAB}, lab)

    _round(worker)
    _time_passes(store)
    _round(worker)
    assert lab.control_ids() == ["ORD0", "ORD0"]
    assert _state(store) == {
        "ORD0": ("retrying", 2),
        "ORD1": ("queued", 0),
        "ORD2": ("queued", 0),
        "ORD3": ("queued", 0),
    }

    healthy = True
    _time_passes(store)
    _round(worker)
    assert lab.control_ids() == ["ORD0", "ORD0", "ORD0", "ORD1", "ORD2", "ORD3"]
    assert set(_state(store).values()) == {("sent", 3), ("sent", 1)}


def _by_patient(log: list[Delivery]) -> dict[str, list[str | None]]:
    lanes: dict[str, list[str | None]] = {}
    for x in log:
        lanes.setdefault(x.ordering_key, []).append(x.idempotency_key)
    return lanes


KEYED = {"mllp": LAB, "order_by": "PID-3.1"}
MIXED = [("A1", "A"), ("B1", "B"), ("A2", "A"), ("C1", "C"), ("B2", "B")]


def test_with_order_by_a_failing_head_blocks_only_its_own_key(store, receive, er7):
    _queue(store, receive, er7, KEYED, *MIXED)
    lab = Downstream(lambda x: SendResult("retry") if x.idempotency_key == "A1" else SENT)
    worker = _worker(store, KEYED, lab, lanes=4)

    _round(worker)
    assert _by_patient(lab.log) == {"A": ["A1"], "B": ["B1", "B2"], "C": ["C1"]}
    state = _state(store)
    assert (state["A1"], state["A2"]) == (("retrying", 1), ("queued", 0))
    assert state["B1"] == state["B2"] == state["C1"] == ("sent", 1)


def test_a_failed_head_releases_its_lane(store, receive, er7):
    _queue(store, receive, er7, KEYED, *MIXED)
    lab = Downstream(lambda x: SendResult("fail", b"MSA|AR") if x.idempotency_key == "A1" else SENT)
    worker = _worker(store, KEYED, lab, lanes=4)

    _round(worker)
    assert _state(store)["A2"] == ("queued", 0)
    _round(worker)
    assert _by_patient(lab.log) == {"A": ["A1", "A2"], "B": ["B1", "B2"], "C": ["C1"]}
    assert _state(store)["A1"] == ("failed", 1)
    assert _state(store)["A2"] == ("sent", 1)


def test_an_unordered_destination_does_not_block(store, receive, er7):
    unordered = {"mllp": LAB, "ordered": False}
    msgs = [(f"ORD{n}", "P1") for n in range(5)]
    _queue(store, receive, er7, unordered, *msgs)
    lab = Downstream(lambda x: SendResult("retry") if x.idempotency_key == "ORD0" else SENT)
    worker = _worker(store, unordered, lab)

    _round(worker)
    assert sorted(lab.control_ids()) == [cid for cid, _ in msgs]
    state = _state(store)
    assert state.pop("ORD0") == ("retrying", 1)
    assert set(state.values()) == {("sent", 1)}


class HeldSender:
    """A receiver that takes its time: each send waits until the test lets it answer."""

    def __init__(self) -> None:
        self.log: list[str | None] = []
        self.sending = asyncio.Event()
        self.answer = asyncio.Event()

    def sender(self, _channel: str, _name: str, _config: DestinationConfig) -> HeldSender:
        return self

    async def send(self, delivery: Delivery) -> SendResult:
        self.log.append(delivery.idempotency_key)
        self.sending.set()
        await self.answer.wait()
        return SENT

    async def close(self) -> None:
        return None


async def _until(condition: Callable[[], Any], what: str) -> None:
    """Wait for ``condition()`` to hold (checked in a thread every 20 ms), up to 20 s."""
    for _ in range(1000):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def _lease_of(store: Store, control_id: str) -> tuple[str | None, Any]:
    with store.read() as conn:
        row = conn.execute(
            select(d.lease_owner, d.lease_until).where(d.idempotency_key == control_id)
        ).one()
    return row.lease_owner, row.lease_until


def test_a_round_slower_than_its_lease_keeps_it_and_no_other_node_sends_it(store, receive, er7):
    _queue(store, receive, er7, {"mllp": LAB}, ("ORD1", "P1"))
    lab = HeldSender()
    worker = _worker(store, {"mllp": LAB}, lab, lease="0.9s")

    async def slow_round() -> None:
        task = asyncio.create_task(worker.run_once())
        await lab.sending.wait()
        _, first_until = await asyncio.to_thread(_lease_of, store, "ORD1")
        await _until(lambda: utcnow() > first_until, "the first lease's end")
        await _until(lambda: _lease_of(store, "ORD1")[1] > utcnow(), "a renewed lease")
        assert (await asyncio.to_thread(_claim, store, "node-b")).lanes == []
        lab.answer.set()
        await task

    asyncio.run(slow_round())
    assert lab.log == ["ORD1"]
    assert _state(store) == {"ORD1": ("sent", 1)}
    assert _lease_of(store, "ORD1") == (None, None)


def test_a_round_that_lost_its_lease_sends_no_more_of_it(store, receive, er7, caplog):
    _queue(store, receive, er7, {"mllp": LAB}, ("ORD1", "P1"), ("ORD2", "P1"))
    lab = HeldSender()
    worker = _worker(store, {"mllp": LAB}, lab, lease="0.6s")

    async def stalled_round() -> None:
        task = asyncio.create_task(worker.run_once())
        await lab.sending.wait()
        await asyncio.to_thread(_time_passes, store)
        taken = await asyncio.to_thread(_claim, store, "node-b", ordered=True)
        assert [x.idempotency_key for x in taken.lanes[0]] == ["ORD1", "ORD2"]
        await _until(lambda: "lost the lease" in caplog.text, "the lost lease noticed")
        lab.answer.set()
        await task

    asyncio.run(stalled_round())
    assert lab.log == ["ORD1"]
    assert {cid: _lease_of(store, cid)[0] for cid in ("ORD1", "ORD2")} == {
        "ORD1": "node-b",
        "ORD2": "node-b",
    }
    assert _state(store) == {"ORD1": ("sending", 0), "ORD2": ("sending", 0)}


def test_a_dead_writer_is_logged_once_by_a_worker_while_it_lasts_and_its_end_once(
    store, receive, er7, caplog
):
    """Each claim fails while the group-commit writer is dead: one ERROR without a
    traceback for the destination, not one with a traceback every poll, and a line when
    its rounds get through again."""
    failing = 5
    _queue(store, receive, er7, {"mllp": LAB}, ("ORD1", "P1"))
    dead, live = dead_writer(store), GroupCommitWriter(store)
    live.start()
    rounds: list[object] = []

    def transact(work: Callable[[Any], Any]) -> Any:
        rounds.append(work)
        return (dead if len(rounds) <= failing else live).run(work)

    async def run_until_sent() -> None:
        sent = asyncio.Event()

        def answer(_delivery: Delivery) -> SendResult:
            sent.set()
            return SENT

        config = DestinationConfig.model_validate({"mllp": LAB})
        options = DispatchOptions.model_validate({"lease": "60s", "poll_interval": "10ms"})
        worker = DestinationWorker(
            store, "orders", "lab", config, Downstream(answer).sender, options, "node-a", transact
        )
        task = asyncio.create_task(worker.run())
        await sent.wait()
        await worker.finish(task)

    try:
        with caplog.at_level(logging.INFO, logger="router.dispatch"):
            asyncio.run(run_until_sent())
    finally:
        live.stop()
    logged = [
        (r.levelname, r.getMessage().split(" (after ")[0], r.exc_info)
        for r in caplog.records
        if r.name == "router.dispatch"
    ]
    assert len(rounds) > failing
    assert logged == [
        (
            "ERROR",
            "dispatch for orders/lab failed: store unavailable: the writer stopped; "
            "retrying quietly until the store commits again",
            None,
        ),
        ("INFO", "dispatch for orders/lab works again: the store commits", None),
    ]
    assert _state(store) == {"ORD1": ("sent", 1)}


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_stop_cancels_a_claim_stuck_in_its_statement(store, receive, er7, monkeypatch, caplog):
    """A stopped worker whose claim still runs a statement after its stop grace cancels it:
    a claim planned badly over a big queue ran for 7 minutes, and the engine's stop
    (SIGTERM) waited for it until it was killed."""
    _queue(store, receive, er7, {"mllp": LAB}, ("ORD0", "P0"))
    claiming = threading.Event()

    def claim_next(*args: Any, **kwargs: Any) -> Claimed:
        claiming.set()
        return real_claim_next(*args, **kwargs)

    real_claim_next = dispatch.claim_next
    monkeypatch.setattr(dispatch, "claim_next", claim_next)
    worker = _worker(store, {"mllp": LAB}, Downstream(), stop_grace=0.05)

    async def stop_while_claiming() -> bool:
        """Whether the worker stopped while its claim still waited for the table."""
        task = asyncio.create_task(worker.run())
        await asyncio.to_thread(claiming.wait, 30)
        await worker.stop()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=60)
        blocker.rollback()  # the table is free again: a claim still waiting goes on
        await asyncio.gather(task, return_exceptions=True)
        return bool(done)

    blocker = store.writer.connect()
    try:
        blocker.begin()  # the claim's query waits for the table meanwhile
        blocker.exec_driver_sql("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        with caplog.at_level(logging.WARNING, logger="router.dispatch"):
            assert asyncio.run(stop_while_claiming())
    finally:
        blocker.close()
    assert "its statement is cancelled" in caplog.text
    assert _state(store) == {"ORD0": ("queued", 0)}


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_reload_cancels_a_claim_stuck_behind_a_lock(store, receive, er7, monkeypatch, caplog):
    """A reload replacing a worker waited for its round for as long as another connection
    held a lock on the deliveries; now, as on stop, the round's statement is cancelled after
    the stop grace and the worker gives way, the deliveries left for its successor."""
    _queue(store, receive, er7, {"mllp": LAB}, ("ORD0", "P0"))
    claiming = threading.Event()

    def claim_next(*args: Any, **kwargs: Any) -> Claimed:
        claiming.set()
        return real_claim_next(*args, **kwargs)

    real_claim_next = dispatch.claim_next
    monkeypatch.setattr(dispatch, "claim_next", claim_next)
    worker = _worker(store, {"mllp": LAB}, Downstream(), stop_grace=0.05)

    async def reload_while_claiming() -> bool:
        """Whether the worker gave way while its claim still waited for the table."""
        task = asyncio.create_task(worker.run())
        await asyncio.to_thread(claiming.wait, 30)
        finishing = asyncio.create_task(worker.finish(task))
        done, _ = await asyncio.wait([finishing], timeout=30)
        blocker.rollback()  # the table is free again: a claim still waiting goes on
        await asyncio.gather(finishing, task, return_exceptions=True)
        return bool(done)

    blocker = store.writer.connect()
    try:
        blocker.begin()
        blocker.exec_driver_sql("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        with caplog.at_level(logging.WARNING, logger="router.dispatch"):
            assert asyncio.run(reload_while_claiming()), "the reload waited for the lock"
    finally:
        blocker.close()
    assert "reload: a store call of orders/lab still ran after 0 s" in caplog.text
    assert _state(store) == {"ORD0": ("queued", 0)}


def test_a_receiver_that_is_down_is_logged_once_with_ids_then_counted_until_a_send_works(
    store, receive, er7, caplog
):
    """Every attempt of every delivery fails: two lines (the first retry, the first given up),
    not one per attempt, each naming the destination, the delivery and its message."""
    down = SendResult("retry", error="127.0.0.1:2576: [Errno 111] Connection refused")
    lab = {"mllp": LAB, "ordered": False, "retry": {"max_attempts": 3, "backoff": ["1s", "1s"]}}
    _queue(store, receive, er7, lab, *((f"ORD{i}", f"P{i}") for i in range(20)))
    downstream = Downstream(lambda _d: down)
    worker = _worker(store, lab, downstream, lanes=1)
    with caplog.at_level(logging.INFO, logger="router"):
        for _ in range(3):
            _round(worker)
            _time_passes(store)
        assert len(downstream.log) == 60
        downstream.answer = lambda _d: SENT
        _queue(store, receive, er7, lab, ("ORD20", "P20"))
        _round(worker)
    first, given_up, sent = downstream.log[0], downstream.log[40], downstream.log[-1]
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("router")]
    assert re.fullmatch(
        r"orders/lab works again: .* sent after \d+ s of failures: .*", logged[-1][1]
    )
    logged[-1] = (logged[-1][0], re.sub(r"after \d+ s", "after N s", logged[-1][1]))
    assert logged == [
        (
            "WARNING",
            f"orders/lab: delivery {first.id} (message {first.message_id}) attempt 1 will be "
            f"retried: {down.error}; further failures to this destination are counted until "
            "one is sent",
        ),
        (
            "ERROR",
            f"orders/lab: delivery {given_up.id} (message {given_up.message_id}) failed after 3 "
            f"attempt(s): {down.error}; further failures to this destination are counted until "
            "one is sent",
        ),
        (
            "INFO",
            f"orders/lab works again: delivery {sent.id} (message {sent.message_id}) sent after "
            "N s of "
            "failures: 40 attempt(s) to be retried, 20 failed for good",
        ),
    ]
