"""One GP file arriving twice at once, on SQLite and PostgreSQL: it goes to DPS once.

Two engine nodes on one store each process their copy in their own transaction. The
intake's idempotent receiver looks for an earlier job of the same file, then inserts its
own: on PostgreSQL both looked before either committed, found none, and both went to DPS.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from threading import Barrier, Event

from sqlalchemy import select, text
from tie_testing import wait_until

from router.dps.jobs import apply, job_record
from router.local_destinations import Refusal
from router.store.database import Store
from router.store.inbound import Inbound, write_inbound
from router.store.schema import jobs, messages

GP_FILE = "A82023_GPR4LNA1.CSA"


def _copies(store: Store, count: int) -> list[tuple[int, bytes]]:
    """The same GP file received ``count`` times (distinct MESH messages): each message's
    id and the job record its intake makes."""
    items = [
        Inbound(
            "gp-extract-intake",
            b"503\\*\r\nDOW~1~~~~~~1234567890~SOMEBODY~JOHN\r\n",
            content_type="application/octet-stream",
            control_id=f"MESH-{n}",
            source={"filename": GP_FILE},
        )
        for n in range(count)
    ]
    with store.begin() as conn:
        write_inbound(conn, items)
        rows = conn.execute(select(messages.c.id, messages.c.uuid).order_by(messages.c.id))
        ids = [(row.id, row.uuid) for row in rows]
    received = datetime(2020, 4, 10, tzinfo=UTC)
    return [
        (message_id, job_record(uuid, "sent_to_dps", filename=GP_FILE, received_at=received))
        for message_id, uuid in ids
    ]


def _outcome(refusal: Refusal | None) -> str:
    return "sent_to_dps" if refusal is None else refusal.status


def _job_count(store: Store) -> int:
    with store.read() as conn:
        return len(conn.execute(select(jobs.c.job_id)).all())


def test_a_copy_processed_while_the_first_is_uncommitted_is_a_duplicate(store: Store):
    """The second node looks while the first has inserted its job and not yet committed."""
    (first_id, first), (second_id, second) = _copies(store, 2)
    first_applied, second_done = Event(), Event()
    second_backend: list[int] = []

    def second_waits_for_the_first() -> bool:
        if second_done.is_set() or store.dialect != "postgresql":
            return True  # SQLite's writers take turns: the second begins after the commit
        if not second_backend:
            return False
        with store.read() as conn:
            waiting = "SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted"
            return bool(conn.scalar(text(waiting), {"pid": second_backend[0]}))

    def first_node() -> str:
        with store.begin() as conn:
            refusal = apply(conn, first, first_id)
            first_applied.set()
            wait_until(second_waits_for_the_first, timeout=10, interval=0.01)
        return _outcome(refusal)

    def second_node() -> str:
        first_applied.wait(10)
        try:
            with store.begin() as conn:
                if store.dialect == "postgresql":
                    second_backend.append(conn.scalar(text("SELECT pg_backend_pid()")))
                return _outcome(apply(conn, second, second_id))
        finally:
            second_done.set()

    with ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(first_node), pool.submit(second_node)]
        assert [o.result() for o in outcomes] == ["sent_to_dps", "filtered"]
    assert _job_count(store) == 1


def test_many_copies_processed_at_once_make_one_job(store: Store):
    copies = _copies(store, 6)
    barrier = Barrier(len(copies))

    def start(copy: tuple[int, bytes]) -> str:
        barrier.wait()
        with store.begin() as conn:
            return _outcome(apply(conn, copy[1], copy[0]))

    with ThreadPoolExecutor(len(copies)) as pool:
        outcomes = list(pool.map(start, copies))
    assert sorted(outcomes) == ["filtered"] * 5 + ["sent_to_dps"]
    assert _job_count(store) == 1
