"""Group-commit ingest: committed before answered, shared commits, failure, idempotent receiver."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from hashlib import sha256
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, event, func, make_url, select, text
from sqlalchemy.exc import OperationalError
from tie_testing import wait_until

from router import metrics
from router.store.blobs import BlobStore
from router.store.database import Store
from router.store.inbound import Inbound, Receipt, time_ordered_uuid, utcnow, write_inbound
from router.store.ingest import GroupCommitWriter, StoreUnavailable
from router.store.queries import MessageFilter, search
from router.store.schema import messages

m = messages.c


def _inbound(n: int, **extra: object) -> Inbound:
    raw = f"MSH|^~\\&|EPR|HOSP|LAB|HOSP|20240101||OML^O21|MSG{n}|P|2.5.1\r".encode()
    return Inbound("orders", raw, message_type="OML^O21", control_id=f"MSG{n}", **extra)


@contextmanager
def running(writer: GroupCommitWriter) -> Iterator[GroupCommitWriter]:
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


@contextmanager
def counting(target: object, name: str) -> Iterator[list[object]]:
    """Every ``name`` event on ``target`` (an engine's commits, a pool's checkouts)."""
    seen: list[object] = []

    def _count(*args: object) -> None:
        seen.append(args)

    event.listen(target, name, _count)
    try:
        yield seen
    finally:
        event.remove(target, name, _count)


@contextmanager
def commits_of(store: Store) -> Iterator[list[object]]:
    """Every commit of the store's writer connections. On SQLite the group commit begins
    and commits straight through the driver, so each ``COMMIT`` the driver runs is
    counted (SQLite's statement trace); on PostgreSQL, SQLAlchemy's commits."""
    if not store.is_sqlite:
        with counting(store.writer, "commit") as seen:
            yield seen
        return
    seen: list[object] = []

    def trace(statement: str) -> None:
        if statement.strip().upper() == "COMMIT":
            seen.append(statement)

    def watch(dbapi_conn: sqlite3.Connection, *_: object) -> None:
        dbapi_conn.set_trace_callback(trace)

    event.listen(store.writer.pool, "checkout", watch)
    try:
        yield seen
    finally:
        event.remove(store.writer.pool, "checkout", watch)


async def _one_batch(writer: GroupCommitWriter, items: list[Inbound]) -> list[object]:
    """Queue every item before the writer starts, so that it takes them as one batch."""
    tasks = [asyncio.create_task(writer.submit(item)) for item in items]
    await asyncio.sleep(0)  # each task has now queued its item and awaits its answer
    writer.start()
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        writer.stop()


@pytest.fixture
def observer(store_url: str) -> Iterator[Store]:
    """A second, independent store handle: what another process would see committed."""
    other = Store(store_url)
    yield other
    other.dispose()


def test_every_message_is_committed_before_its_answer(store, observer):
    async def submit_and_look(writer: GroupCommitWriter, n: int) -> bool:
        receipt = await writer.submit(_inbound(n))
        with observer.read() as conn:
            found = conn.scalar(select(m.control_id).where(m.uuid == receipt.uuid))
        return found == f"MSG{n}"

    async def main(writer: GroupCommitWriter) -> list[bool]:
        return await asyncio.gather(*(submit_and_look(writer, n) for n in range(50)))

    with running(GroupCommitWriter(store)) as writer:
        seen = asyncio.run(main(writer))
    assert seen == [True] * 50


def test_concurrent_submitters_share_commits(store):
    """8 connections each waiting for their answer: commits are far fewer than messages."""
    per_task, tasks = 25, 8

    async def connection(writer: GroupCommitWriter, t: int) -> list[Receipt]:
        return [await writer.submit(_inbound(t * per_task + i)) for i in range(per_task)]

    async def main(writer: GroupCommitWriter) -> list[list[Receipt]]:
        return await asyncio.gather(*(connection(writer, t) for t in range(tasks)))

    with commits_of(store) as commits, running(GroupCommitWriter(store)) as writer:
        receipts = asyncio.run(main(writer))

    total = per_task * tasks
    assert len({r.uuid for rs in receipts for r in rs}) == total
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(messages)) == total
    assert 0 < len(commits) <= total // 2, f"{total / len(commits):.1f} messages per commit"


def test_the_peers_one_commit_answered_share_the_next(store):
    """Peers that each send again once answered (MLLP connections) are waited for, as they
    come back, by the commit after the one that answered them: every commit holds one
    message of each. The peers' first messages are queued before the writer starts, so the
    first commit answers all of them; the window is long so that a loaded machine cannot
    split a round (it is never waited out: every awaited peer comes back)."""
    per_peer, peers = 20, 4

    async def peer(writer: GroupCommitWriter, p: int) -> None:
        for i in range(per_peer):
            await writer.submit(_inbound(p * per_peer + i), peer=f"10.0.0.{p}:2575")

    async def main(writer: GroupCommitWriter) -> None:
        senders = [asyncio.create_task(peer(writer, p)) for p in range(peers)]
        await asyncio.sleep(0)  # each sender has queued its first message
        writer.start()
        await asyncio.gather(*senders)

    writer = GroupCommitWriter(store, regather=30)
    with commits_of(store) as commits:
        try:
            asyncio.run(asyncio.wait_for(main(writer), 60))
        finally:
            writer.stop()

    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(messages)) == per_peer * peers
    assert len(commits) == per_peer, f"{len(commits)} commits"


def test_a_message_of_no_peer_is_not_held_for_peers(store):
    """A commit waiting for a peer to come back ends when a message of no peer (HTTP,
    files, MESH) comes in: its sender is not about to send again and does not wait for
    the peers, however long the window."""

    async def main(writer: GroupCommitWriter) -> None:
        await writer.submit(_inbound(1), peer="10.0.0.1:2575")  # the next commit awaits it
        other_peer = asyncio.create_task(writer.submit(_inbound(2), peer="10.0.0.2:2575"))
        await asyncio.sleep(0)  # queued: the next commit holds it, waiting for the first
        await asyncio.to_thread(writer.submit_sync, _inbound(3))
        await other_peer

    with running(GroupCommitWriter(store, regather=3600)) as writer:
        asyncio.run(asyncio.wait_for(main(writer), 60))
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(messages)) == 3


def _short_timeout_url(url: str) -> str:
    """The URL with a 200 ms lock and statement timeout on PostgreSQL."""
    parsed = make_url(url)
    options = parsed.query.get("options", "")
    options = f"{options} -c lock_timeout=200 -c statement_timeout=2000".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


@contextmanager
def write_locked(store: Store) -> Iterator[None]:
    """Another connection holds the lock every writer of ``messages`` needs."""
    if store.is_sqlite:
        path = make_url(store.url).database
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = create_engine(store.url)
    try:
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


def test_a_store_that_cannot_commit_fails_every_waiter_in_the_batch(store, caplog):
    impatient = Store(
        store.url if store.is_sqlite else _short_timeout_url(store.url), busy_timeout=0.2
    )
    try:
        items = [_inbound(n) for n in range(10)]
        with write_locked(store), counting(impatient.writer.pool, "checkout") as attempts:
            failing = GroupCommitWriter(impatient)
            results = asyncio.run(_one_batch(failing, items))
        assert len(attempts) == 1
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert failing.failing, "/health must see that the store takes no writes"
        assert "store commit failed for 10 message(s)" in caplog.text
        assert "EPR|HOSP" not in caplog.text, "message content must stay out of the log"

        with store.read() as conn:
            assert conn.scalar(select(func.count()).select_from(messages)) == 0

        with running(GroupCommitWriter(impatient)) as writer:
            writer.failing = True  # as the failed writer left it
            receipt = writer.submit_sync(_inbound(99))
            assert not writer.failing
        with store.read() as conn:
            assert conn.scalars(select(m.uuid)).all() == [receipt.uuid]
    finally:
        impatient.dispose()


def test_a_failed_commit_of_other_work_logs_what_failed(store, monkeypatch, caplog):
    """Only the processor's or dispatcher's writes: not "0 message(s)"."""

    def unreachable() -> None:
        raise OSError("connection refused")

    monkeypatch.setattr(store.writer, "connect", unreachable)
    with running(GroupCommitWriter(store)) as writer, pytest.raises(StoreUnavailable):
        writer.run(lambda conn: None)
    assert "store commit failed for 1 other write(s) (processing, dispatch" in caplog.text
    assert "0 message(s)" not in caplog.text


def test_a_store_down_while_senders_retry_is_logged_when_it_starts_and_ends(
    store, monkeypatch, caplog
):
    """Each sender resends at once after its AE: a failed commit each time, which was a
    multi-line ERROR each (80,000 lines a minute from one sender with PostgreSQL down)."""
    connect = store.writer.connect
    down = [True]

    def refused() -> object:
        if down[0]:
            cause = psycopg.OperationalError(
                'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
                "Connection refused\n\tIs the server running on that host?"
            )
            raise OperationalError(None, None, cause)
        return connect()

    monkeypatch.setattr(store.writer, "connect", refused)
    caplog.set_level(logging.INFO, logger="router.store.ingest")
    with running(GroupCommitWriter(store)) as writer:
        for n in range(50):
            with pytest.raises(StoreUnavailable):
                writer.submit_sync(_inbound(n))
        down[0] = False
        writer.submit_sync(_inbound(50))
    logged = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "router.store.ingest"
    ]
    assert logged == [
        (
            "ERROR",
            "store commit failed: store unavailable: OperationalError: "
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            "Connection refused; retrying quietly until the store commits again",
        ),
        ("INFO", "store commit works again: the store commits (after 0 s, 50 failed round(s))"),
    ]


def _row(store: Store, uuid: str) -> dict[str, object]:
    with store.read() as conn:
        return dict(conn.execute(select(messages).where(m.uuid == uuid)).one()._mapping)


def test_a_repeat_within_the_window_gets_the_original_ack(store):
    window = {"idempotency_window": 3600.0, "sender": "EPR/HOSP"}
    with running(GroupCommitWriter(store)) as writer:
        first = writer.submit_sync(_inbound(1, ack=b"ACK-ORIGINAL", **window))
        again = writer.submit_sync(_inbound(1, ack=b"ACK-NEW", **window))

    assert first.duplicate_of is None
    assert again.ack == b"ACK-ORIGINAL"
    assert again.duplicate_of == first.uuid
    original, duplicate = _row(store, first.uuid), _row(store, again.uuid)
    assert original["status"] == "received"
    assert duplicate["status"] == "filtered"
    assert duplicate["duplicate_of"] == original["id"]
    assert duplicate["ack"] == b"ACK-ORIGINAL"


def test_another_sender_or_an_old_original_makes_a_new_message(store):
    window = 3600.0
    long_ago = utcnow() - timedelta(seconds=2 * window)
    with running(GroupCommitWriter(store)) as writer:
        submit = writer.submit_sync
        submit(_inbound(1, sender="EPR/HOSP", idempotency_window=window, ack=b"A1"))
        other_sender = submit(_inbound(1, sender="PAS/HOSP", idempotency_window=window, ack=b"A2"))
        submit(_inbound(2, sender="EPR/HOSP", idempotency_window=window, received_at=long_ago))
        after_window = submit(_inbound(2, sender="EPR/HOSP", idempotency_window=window, ack=b"A3"))

    for receipt, ack in ((other_sender, b"A2"), (after_window, b"A3")):
        assert receipt.duplicate_of is None
        assert receipt.ack == ack
        row = _row(store, receipt.uuid)
        assert (row["status"], row["duplicate_of"]) == ("received", None)


def test_two_copies_in_one_batch_store_one_original(store):
    window = {"idempotency_window": 3600.0, "sender": "EPR/HOSP"}
    items = [
        _inbound(7, ack=b"ACK-FIRST", keys=(("x_request_id", "req-first"),), **window),
        _inbound(7, ack=b"ACK-SECOND", keys=(("x_request_id", "req-second"),), **window),
    ]
    with commits_of(store) as commits:
        first, second = asyncio.run(_one_batch(GroupCommitWriter(store), items))

    assert len(commits) == 1
    assert isinstance(first, Receipt) and isinstance(second, Receipt)
    assert (first.duplicate_of, first.ack) == (None, b"ACK-FIRST")
    assert (second.duplicate_of, second.ack) == (first.uuid, b"ACK-FIRST")
    original, duplicate = _row(store, first.uuid), _row(store, second.uuid)
    assert original["status"] == "received"
    assert (duplicate["status"], duplicate["duplicate_of"]) == ("filtered", original["id"])
    # Each copy is found by the id its sender was answered with (a FHIR X-Request-Id).
    with store.read() as conn:
        for key, row in (("req-first", original), ("req-second", duplicate)):
            assert [r["id"] for r in search(conn, MessageFilter(key=key))] == [row["id"]]


def test_a_failing_job_is_rolled_back_alone_and_the_rest_of_its_batch_commits(store):
    """Jobs (the processor's, the dispatcher's writes) share a batch with messages: one that
    fails undoes only its own writes and raises in its caller."""

    def failing(conn):
        conn.execute(messages.insert(), _row_of(_inbound(900)))
        conn.execute(text("SELECT no_such_column FROM messages"))

    def succeeding(conn):
        conn.execute(messages.insert(), _row_of(_inbound(901)))
        return "done"

    async def main(writer: GroupCommitWriter) -> list[object]:
        loop = asyncio.get_running_loop()
        futures = [
            asyncio.wrap_future(writer.run_soon(failing), loop=loop),
            asyncio.create_task(writer.submit(_inbound(1))),
            asyncio.wrap_future(writer.run_soon(succeeding), loop=loop),
        ]
        await asyncio.sleep(0)
        writer.start()
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            writer.stop()

    failed, receipt, done = asyncio.run(main(GroupCommitWriter(store)))
    assert isinstance(failed, Exception) and not isinstance(failed, StoreUnavailable)
    assert isinstance(receipt, Receipt) and done == "done"
    with store.read() as conn:
        assert sorted(conn.scalars(select(m.control_id))) == ["MSG1", "MSG901"]


def test_background_work_found_alone_waits_to_share_the_next_message_commit(store):
    """The processor's and dispatcher's writes (``run``) found alone wait for a message and
    commit with it: one fsync instead of two, and the sender is not held up behind them."""
    writer = GroupCommitWriter(store, share_wait=30)
    with commits_of(store) as commits, ThreadPoolExecutor(1) as pool:
        job = pool.submit(writer.run, lambda conn: conn.scalar(text("SELECT 1")))
        wait_until(lambda: not writer._queue.empty())  # the job is queued
        with running(writer):
            wait_until(writer._queue.empty)  # the writer holds the job, waiting for company
            receipt = writer.submit_sync(_inbound(1))
            assert job.result(timeout=10) == 1
    assert len(commits) == 1
    with store.read() as conn:
        assert conn.scalar(select(m.uuid)) == receipt.uuid


def test_background_work_alone_is_committed_after_a_short_wait(store):
    """With no message arriving, the waiting work is committed on its own."""
    with running(GroupCommitWriter(store, share_wait=0.01)) as writer:
        assert writer.run(lambda conn: conn.scalar(text("SELECT 2"))) == 2
        writer.run(lambda conn: conn.execute(messages.insert(), _row_of(_inbound(7))))
    with store.read() as conn:
        assert list(conn.scalars(select(m.control_id))) == ["MSG7"]


def _commit_samples() -> tuple[float, ...]:
    """Commits measured, their seconds, messages counted in commits that stored any, and
    commits of at most four and of at most eight messages."""
    value = metrics.REGISTRY.get_sample_value
    return (
        value("tie_group_commit_seconds_count") or 0.0,
        value("tie_group_commit_seconds_sum") or 0.0,
        value("tie_group_commit_messages_sum") or 0.0,
        value("tie_group_commit_messages_bucket", {"le": "4.0"}) or 0.0,
        value("tie_group_commit_messages_bucket", {"le": "8.0"}) or 0.0,
    )


def test_each_group_commit_is_measured_with_the_messages_it_stored(store):
    """The two figures behind a slow ACK on ``/metrics``: how long each commit took to be
    durable, and how many messages shared it (a commit of background work alone stores
    none and is not counted as a commit of zero messages)."""
    before = _commit_samples()
    writer = GroupCommitWriter(store)
    asyncio.run(_one_batch(writer, [_inbound(n) for n in range(5)]))
    after_batch = _commit_samples()
    commits, seconds, stored, up_to_4, up_to_8 = (
        a - b for a, b in zip(after_batch, before, strict=True)
    )
    assert (commits, stored, up_to_4, up_to_8) == (1, 5, 0, 1)
    assert seconds > 0
    with running(GroupCommitWriter(store, share_wait=0.01)) as writer:
        writer.run(lambda conn: conn.scalar(text("SELECT 1")))
    after_job = _commit_samples()
    assert after_job[0] - after_batch[0] == 1
    assert after_job[2] == after_batch[2]


def _row_of(item: Inbound) -> dict[str, object]:
    return {
        "uuid": item.uuid,
        "channel": item.channel,
        "received_at": item.received_at,
        "status": "received",
        "content_type": "hl7v2",
        "control_id": item.control_id,
        "size": len(item.raw),
        "raw": item.raw,
    }


def test_message_uuids_are_distinct_version_7_uuids_in_canonical_form_and_time_order():
    before = time.time_ns() // 1_000_000
    made = [time_ordered_uuid() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(u) for u in made]
    assert {(p.version, p.variant) for p in parsed} == {(7, uuid.RFC_4122)}
    assert [str(p) for p in parsed] == made
    assert len(set(made)) == len(made)
    stamps = [p.int >> 80 for p in parsed]  # the first 48 bits: Unix time in milliseconds
    assert stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after


def test_a_row_id_is_kept_only_from_an_insert_that_told_it(store: Store) -> None:
    """Settled writes attach keys and deliveries by ``Inbound.id``: one kept from a rolled
    back insert would attach them to another message."""
    alone, other = _inbound(1), _inbound(2)
    with pytest.raises(RuntimeError), store.begin() as conn:
        write_inbound(conn, [alone])
        raise RuntimeError("rolled back")
    with store.begin() as conn:
        write_inbound(conn, [alone, other])
    assert (alone.id, other.id) == (None, None)  # a batch: looked up by UUID when needed
    third = _inbound(3)
    with store.begin() as conn:
        write_inbound(conn, [third])
        stored = conn.scalar(select(m.id).where(m.uuid == third.uuid))
    assert third.id == (stored if store.is_sqlite else None)


def test_a_job_whose_waiter_gave_up_does_not_stop_the_writer(store):
    """An HTTP source awaits ``run_soon`` through ``asyncio.wrap_future``: cancelled (the
    request's task was), it cancels the job's future. Answering it must not kill the one
    writer thread, which would leave every later sender waiting for an answer forever."""
    writer = GroupCommitWriter(store)
    abandoned = writer.run_soon(lambda conn: conn.execute(text("SELECT 1")).scalar())
    assert abandoned.cancel()
    with running(writer):
        assert writer.run_soon(lambda conn: "still writing").result(timeout=10) == "still writing"


def test_a_writer_that_dies_refuses_whoever_waits_and_whoever_comes_after(store, caplog):
    """Its loop fails (not a commit) with two entries taken and four still queued: all six,
    and a message submitted after, get ``StoreUnavailable`` at once, not a wait forever."""
    writer = GroupCommitWriter(store, max_batch=2)
    drain = writer._drain

    def dying(batch: list[object], *first: object) -> bool:
        drain(batch, *first)  # type: ignore[arg-type]
        raise RuntimeError("injected: the writer's loop fails")

    writer._drain = dying  # type: ignore[method-assign]

    async def waiting() -> list[object]:
        tasks = [asyncio.create_task(writer.submit(_inbound(n), peer=n)) for n in range(3)]
        await asyncio.sleep(0)  # each task has now queued its item and awaits its answer
        job = writer.run_soon(lambda conn: "never run")
        released = writer.release(_inbound(3, status="validating"))
        last = asyncio.create_task(writer.submit(_inbound(4)))
        await asyncio.sleep(0)
        writer.start()
        answers = [*tasks, asyncio.wrap_future(job), asyncio.wrap_future(released), last]
        return await asyncio.wait_for(asyncio.gather(*answers, return_exceptions=True), 10)

    try:
        results = asyncio.run(waiting())
        assert [type(r) for r in results] == [StoreUnavailable] * 6, results
        with ThreadPoolExecutor(1) as pool:
            later = pool.submit(writer.submit_sync, _inbound(5))
            with pytest.raises(StoreUnavailable):
                later.result(timeout=10)
            job = pool.submit(writer.run, lambda conn: "never run")
            with pytest.raises(StoreUnavailable):
                job.result(timeout=10)
        assert not writer.alive, "/health must see the writer gone"
        assert "the group-commit writer stopped" in caplog.text
    finally:
        writer.stop()
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(messages)) == 0


def _large(n: int) -> Inbound:
    """A message of some 4 KiB: above the threshold of ``_small_blobs``."""
    item = _inbound(n)
    assert isinstance(item.raw, bytes)
    item.raw += b"OBX|1|TX|||" + b"x" * 4096 + f"{n}\r".encode()
    return item


def _small_blobs(store: Store, root: Path) -> BlobStore:
    store.blobs = BlobStore(root, threshold=1024)
    return store.blobs


def test_a_large_body_is_a_blob_in_place_before_its_row_commits(store, tmp_path):
    """From a source on the event loop (``submit``) or in a thread (``submit_sync``) alike:
    the row keeps the hash and the size, the blob the bytes."""
    blobs = _small_blobs(store, tmp_path / "blobs")
    first, second = _large(1), _large(2)
    bodies = [first.raw, second.raw]
    with running(GroupCommitWriter(store)) as writer:
        asyncio.run(writer.submit(first))
        writer.submit_sync(second)
    for item, body in zip((first, second), bodies, strict=True):
        assert isinstance(body, bytes)
        row = _row(store, item.uuid)
        assert (row["raw"], row["size"]) == (b"", len(body))
        assert row["blob_sha256"] == sha256(body).hexdigest()
        assert blobs.path(row["blob_sha256"]).read_bytes() == body


def test_a_blob_store_that_cannot_write_makes_the_store_unavailable(store, tmp_path):
    """Its sender gets its negative answer and sends again; no row names a missing blob."""
    (tmp_path / "blobs").write_text("a file where the blob folder should be")
    _small_blobs(store, tmp_path / "blobs")
    with running(GroupCommitWriter(store)) as writer:
        with pytest.raises(StoreUnavailable, match="blob store"):
            asyncio.run(writer.submit(_large(1)))
        with pytest.raises(StoreUnavailable, match="blob store"):
            writer.submit_sync(_large(2))
        writer.submit_sync(_inbound(3))  # a small one is stored as ever
    with store.read() as conn:
        assert conn.scalars(select(m.control_id)).all() == ["MSG3"]
