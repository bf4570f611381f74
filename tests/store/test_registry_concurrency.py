"""Indexing one ServiceRequest at once from several transactions (two nodes on one
PostgreSQL, or two exchanges' records): one registry row, every message a version of it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

from sqlalchemy import func, select

from router.fhir.bars import IndexedRequest
from router.fhir.registry import index
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import messages, service_request_identifiers, service_requests

WRITERS = 6
ROUNDS = 5


def _request(rid: str, *identifiers: tuple[str, str]) -> IndexedRequest:
    resource = {"resourceType": "ServiceRequest", "id": rid, "status": "active"}
    return IndexedRequest(rid, "active", "9000000009", identifiers, resource)


def _message(store: Store) -> int:
    with store.begin() as conn:
        return conn.execute(
            messages.insert().values(
                uuid="m-1",
                channel="bars",
                received_at=utcnow(),
                status="processed",
                content_type="fhir+json",
                size=0,
                raw=b"",
            )
        ).inserted_primary_key[0]


def _index_at_once(store: Store, message_id: int, items: list[IndexedRequest]) -> list[str]:
    """Each item indexed in a transaction of its own, all started together; the failures."""
    barrier = Barrier(len(items))

    def write(item: IndexedRequest) -> str | None:
        barrier.wait()  # not inside the transaction: SQLite's writers take turns from BEGIN
        try:
            with store.begin() as conn:
                index(conn, "bars", message_id, [item], sender="s", receiver="r", now=utcnow())
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(len(items)) as pool:
        return [failure for failure in pool.map(write, items) if failure]


def _rows(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(service_requests).order_by(service_requests.c.id)))


def test_one_service_request_indexed_at_once_is_one_row_with_every_version(store: Store):
    """On PostgreSQL several read the same version and wrote the next: versions were lost
    (or two read it was new, and the second failed on the unique key with its record)."""
    message_id = _message(store)
    for round_ in range(ROUNDS):
        rid = f"sr-{round_}"
        failures = _index_at_once(store, message_id, [_request(rid)] * WRITERS)
        assert failures == []
        [row] = [row for row in _rows(store) if row.resource_id == rid]
        assert row.version == WRITERS


def test_service_requests_sharing_an_identifier_indexed_at_once_are_one_row(store: Store):
    """A later message may carry the ServiceRequest under another id with the same
    identifier: indexed at once on PostgreSQL, each became a row of its own."""
    message_id = _message(store)
    for round_ in range(ROUNDS):
        shared = ("https://example.org/referral", f"R-{round_}")
        items = [_request(f"sr-{round_}-{n}", shared) for n in range(WRITERS)]
        assert _index_at_once(store, message_id, items) == []
        with store.read() as conn:
            holders = conn.scalar(
                select(func.count())
                .select_from(service_request_identifiers)
                .where(service_request_identifiers.c.value == shared[1])
            )
        assert holders == 1
        [row] = [row for row in _rows(store) if row.resource_id.startswith(f"sr-{round_}-")]
        assert row.version == WRITERS
