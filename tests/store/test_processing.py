"""The processor: outcomes, deliveries and correlation keys in one transaction, resumable."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from store_testing import dead_writer, orders_channel, refused, set_paused
from tie_testing import wait_until

from router import mappings, processing
from router.connectors.hl7_inbound import hl7_inbound
from router.processing import Processor, _claim
from router.store.database import Store
from router.store.inbound import write_inbound
from router.store.ingest import GroupCommitWriter
from router.store.migrate import upgrade
from router.store.schema import correlations, deliveries, messages

m, d = messages.c, deliveries.c


def _statuses(store: Store, ids: list[int]) -> list[tuple[str, str | None]]:
    with store.read() as conn:
        rows = conn.execute(select(m.id, m.status, m.error).where(m.id.in_(ids)).order_by(m.id))
        return [(r.status, r.error) for r in rows]


def _deliveries(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(deliveries).order_by(d.id)))


def _count(store: Store, table: Any) -> int:
    with store.read() as conn:
        return conn.scalar(select(func.count()).select_from(table))


def test_run_once_settles_messages_and_writes_deliveries_and_keys(store, receive, er7):
    ids = receive(
        "orders",
        er7("ORD1"),
        er7("RES1", kind="ORU^R01"),
        b"this is not HL7 at all",
    )
    assert Processor(store, {"orders": orders_channel()}).run_once() == 3

    (ok, ok_error), (filtered, why), (error, broken) = _statuses(store, ids)
    assert (ok, ok_error) == ("processed", None)
    assert filtered == "filtered" and "filter not met" in why
    assert error == "error" and "unreadable HL7 v2" in broken

    (delivery,) = _deliveries(store)
    assert (delivery.message_id, delivery.destination, delivery.status) == (ids[0], "lab", "queued")
    assert delivery.payload == er7("ORD1")
    assert delivery.idempotency_key == "ORD1"
    with store.read() as conn:
        c = correlations.c
        keys = set(conn.execute(select(c.message_id, c.key, c.value)))
    assert keys == {
        (ids[0], "control_id", "ORD1"),
        (ids[0], "placer", "ORD1-PLACER"),
        (ids[1], "control_id", "RES1"),
        (ids[1], "placer", "RES1-PLACER"),
    }


def test_outcome_and_deliveries_commit_together_or_not_at_all(store, receive, er7):
    (message_id,) = receive("orders", er7("ORD1"))
    processor = Processor(store, {"orders": orders_channel()})

    with refused(store, "deliveries"), pytest.raises(Exception, match="insert refused"):
        processor.run_once()
    assert _statuses(store, [message_id]) == [("received", None)]
    assert _deliveries(store) == []
    assert _count(store, correlations) == 0

    assert processor.run_once() == 1
    assert processor.run_once() == 0
    assert _statuses(store, [message_id]) == [("processed", None)]
    assert [x.message_id for x in _deliveries(store)] == [message_id]
    assert _count(store, correlations) == 2


def test_a_new_processor_resumes_received_messages(store, receive, er7):
    ids = receive("orders", *(er7(f"ORD{n}") for n in range(5)))
    channels = {"orders": orders_channel()}
    assert Processor(store, channels, batch=2).run_once() == 2
    assert [s for s, _ in _statuses(store, ids)] == ["processed"] * 2 + ["received"] * 3

    restarted = Store(store.url)
    try:
        after_restart = Processor(restarted, channels, batch=100)
        assert after_restart.run_once() == 3
        assert after_restart.run_once() == 0
    finally:
        restarted.dispose()
    assert [s for s, _ in _statuses(store, ids)] == ["processed"] * 5
    assert [x.message_id for x in _deliveries(store)] == ids


def test_a_failing_mapping_marks_only_its_message_error(store, receive, er7, tmp_path: Path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "risky.py").write_text(
        "def normalise(message):\n"
        "    if message.get('PID-3.1') == 'BAD':\n"
        "        raise ValueError('cannot normalise patient BAD')\n"
        "    return message.raw.replace(b'|EPR|', b'|TIE|')\n"
    )
    mappings.mount(folder)
    channel = orders_channel(transform="risky:normalise")
    ids = receive("orders", er7("ORD1"), er7("ORD2", patient="BAD"), er7("ORD3"))

    assert Processor(store, {"orders": channel}).run_once() == 3

    (first, _), (status, error), (third, _) = _statuses(store, ids)
    assert (first, status, third) == ("processed", "error", "processed")
    assert error.startswith("Traceback (most recent call last)")
    assert "risky.py" in error
    assert "ValueError: cannot normalise patient BAD" in error
    sent = _deliveries(store)
    assert [x.message_id for x in sent] == [ids[0], ids[2]]
    assert all(b"|TIE|" in x.payload for x in sent)


def test_an_outcome_the_store_refuses_is_its_messages_error_not_a_stall(
    store, receive, er7, tmp_path: Path
):
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "odd.py").write_text(
        "from router.message import Output\n"
        "def label(message):\n"
        "    odd = message.get('PID-3.1') == 'BAD'\n"
        "    return Output(message.raw, content_type='x' * 100 if odd else 'hl7v2')\n"
    )
    mappings.mount(folder)
    channel = replace(orders_channel(transform="odd:label"), revision=7)
    ids = receive("orders", er7("ORD1"), er7("ORD2", patient="BAD"), er7("ORD3"))

    assert Processor(store, {"orders": channel}).run_once() == 3
    with store.read() as conn:
        revisions = conn.scalars(select(messages.c.revision).where(messages.c.id.in_(ids)))
        assert list(revisions) == [7, 7, 7]  # the refused one's error too: revision 7 decided it

    (first, _), (status, error), (third, _) = _statuses(store, ids)
    assert (first, third) == ("processed", "processed")
    if store.is_sqlite:  # SQLite keeps a text of any length in a VARCHAR(64)
        assert status == "processed"
    else:
        assert status == "error"
        assert error.startswith("the store refused its outcome: StringDataRightTruncation")
        assert [x.message_id for x in _deliveries(store)] == [ids[0], ids[2]]


def test_a_paused_channel_waits_and_then_runs_in_order(store, receive, er7):
    channels = {"orders": orders_channel(), "results": orders_channel("results")}
    set_paused(store, "orders", True)
    waiting = receive("orders", *(er7(f"ORD{n}") for n in range(3)))
    other = receive("results", er7("RES1"))
    processor = Processor(store, channels, batch=1)

    assert processor.run_once() == 1
    assert processor.run_once() == 0
    assert _statuses(store, other) == [("processed", None)]
    assert [s for s, _ in _statuses(store, waiting)] == ["received"] * 3

    set_paused(store, "orders", False)
    for done in range(1, 4):
        assert processor.run_once() == 1
        statuses = [s for s, _ in _statuses(store, waiting)]
        assert statuses == ["processed"] * done + ["received"] * (3 - done)
    assert processor.run_once() == 0
    assert [x.message_id for x in _deliveries(store)] == [*other, *waiting]


def test_a_claim_takes_the_first_of_every_channel_in_receive_order(store, receive, er7):
    """Channels received interleaved are claimed by id across channels, ``batch`` at a time,
    a paused channel's backlog passed over."""
    channels = {name: orders_channel(name) for name in ("orders", "results", "held")}
    set_paused(store, "held", True)
    backlog = receive("held", *(er7(f"H{n}") for n in range(5)))
    ids = [receive(name, er7(f"{name}{n}"))[0] for n in range(3) for name in ("orders", "results")]
    processor = Processor(store, channels, batch=4)

    assert processor.run_once() == 4
    assert [s for s, _ in _statuses(store, ids)] == ["processed"] * 4 + ["received"] * 2
    assert processor.run_once() == 2
    assert [x.message_id for x in _deliveries(store)] == ids
    assert [s for s, _ in _statuses(store, backlog)] == ["received"] * 5


def test_the_sqlite_claim_seeks_each_channel_instead_of_reading_every_backlog(tmp_path, er7):
    """Every statement of the claim is an index search, none a scan of ``messages``: with a
    paused channel's 200,000 messages waiting, a scan in id order read them all on every
    claim of the other channels (0.1-0.8 s each)."""
    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    try:
        upgrade(store)
        with store.begin() as conn:
            write_inbound(conn, [hl7_inbound("held", er7(f"H{n}")) for n in range(3)])
            write_inbound(conn, [hl7_inbound("orders", er7(f"O{n}")) for n in range(2)])
        statements: list[tuple[str, Any]] = []

        def record(conn: Any, cursor: Any, sql: str, params: Any, *_: Any) -> None:
            statements.append((sql, params))

        with store.read() as conn:
            event.listen(conn, "before_cursor_execute", record)
            claimed = _claim(conn, ["orders", "results"], 500, lock=False)
            event.remove(conn, "before_cursor_execute", record)
            plans = [
                [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)]
                for sql, params in statements
            ]
    finally:
        store.dispose()
    assert [row.channel for row in claimed] == ["orders", "orders"]
    steps = [step for plan in plans for step in plan]
    assert not [step for step in steps if step.startswith("SCAN")], plans
    assert any("ix_messages_received_by_channel" in step for step in steps), plans


def test_a_dead_writer_is_logged_once_while_it_lasts_and_its_end_once(tmp_path, er7, caplog):
    """Each round fails while the group-commit writer is dead and a message waits: one
    ERROR without a traceback, not one with a traceback every round (a log flood), and a
    line when rounds get through again. (On SQLite: there the processor writes through
    the writer; on PostgreSQL it commits itself.)"""
    failing = 5
    store = Store(f"sqlite:///{tmp_path / 'tie.db'}")
    upgrade(store)
    waiting = hl7_inbound("orders", er7("O1"))
    with store.begin() as conn:
        write_inbound(conn, [waiting])

    def status() -> str:
        with store.read() as conn:
            return conn.scalar(select(m.status).where(m.uuid == waiting.uuid))

    dead, live = dead_writer(store), GroupCommitWriter(store)
    live.start()
    rounds: list[object] = []

    def transact(work: Any) -> Any:
        rounds.append(work)
        return (dead if len(rounds) <= failing else live).run(work)

    processor = Processor(store, {"orders": orders_channel()}, transact=transact, idle_wait=0.01)
    try:
        with caplog.at_level(logging.INFO, logger="router.processing"):
            processor.start()
            wait_until(lambda: status() == "processed")
    finally:
        processor.stop()
        live.stop()
        store.dispose()
    logged = [
        (r.levelname, r.getMessage().split(" (after ")[0], r.exc_info)
        for r in caplog.records
        if r.name == "router.processing"
    ]
    assert len(rounds) == failing + 1
    assert logged == [
        (
            "ERROR",
            "processing batch failed: store unavailable: the writer stopped; "
            "retrying quietly until the store commits again",
            None,
        ),
        ("INFO", "processing batch works again: the store commits", None),
    ]


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_stop_cancels_a_batch_stuck_behind_a_lock(store, receive, er7, monkeypatch, caplog):
    """The engine's stop (SIGTERM) waited for the processor's batch for as long as another
    connection held a lock on the messages; now, as dispatch's, its statement is cancelled
    after the stop grace and the batch rolled back, its messages left for the next start."""
    (message_id,) = receive("orders", er7("ORD1"))
    claiming = threading.Event()

    def claim(*args: Any, **kwargs: Any) -> list[Any]:
        claiming.set()
        return _claim(*args, **kwargs)

    monkeypatch.setattr(processing, "_claim", claim)
    processor = Processor(store, {"orders": orders_channel()}, idle_wait=0.01, stop_grace=0.05)
    blocker = store.writer.connect()
    try:
        blocker.begin()  # the claim's query waits for the table meanwhile
        blocker.exec_driver_sql("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        processor.start()
        assert claiming.wait(30)
        stopping = threading.Thread(target=processor.stop, daemon=True)
        with caplog.at_level(logging.INFO, logger="router.processing"):
            stopping.start()
            stopping.join(30)
            stopped = not stopping.is_alive()
        blocker.rollback()  # the table is free again: a batch still waiting goes on
        stopping.join(30)
    finally:
        blocker.close()
    assert stopped, "the stop waited for the lock"
    assert "the processing batch still ran after 0 s; its statement is cancelled" in caplog.text
    assert _statuses(store, [message_id]) == [("received", None)]
