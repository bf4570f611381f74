"""The ServiceRequest registry: the latest version of every ServiceRequest seen in a routed
BaRS message, found by identifier, patient NHS number or status.

Rows are written with the record of the exchange that carried them, once its models
passed validation (router.fhir.exchange.accept_message). A later
message with the same ServiceRequest (by id, or by any of its identifiers) makes a new
version; the sender and receiver stay those of the message that first carried it (the
referral's requester and performer, whichever way later messages go).

Indexing reads whether a ServiceRequest is known and then inserts or updates it: writers
take turns (``hold_key``), or two nodes on one PostgreSQL (or two exchanges' records)
would both insert it, or both make the same version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    update,
)

from router.fhir.bars import NHS_NUMBER, IndexedRequest
from router.fhir.outcome import Issue, operation_outcome
from router.fhir.search_params import Criteria, Token
from router.store.fast_insert import insert_rows
from router.store.locks import hold_key
from router.store.schema import service_request_identifiers, service_requests

r = service_requests.c
i = service_request_identifiers.c
MAX_RESULTS = 500
# One key for every channel: a transaction (a batch of exchange records) may index several
# channels, and taking their keys in different orders on two nodes could deadlock.
INDEX_LOCK = "service_requests"
REQUEST_STATUS = "http://hl7.org/fhir/request-status"


# Statements built once: in the writer's transaction, building a statement and its cache
# key per call cost about as much as running it (docs/performance.md#fhir-over-http).
_BY_ID = select(service_requests).where(
    r.channel == bindparam("channel"), r.resource_id == bindparam("resource_id")
)
# Candidates sharing an identifier value; the caller keeps the first whose system matches too.
_BY_VALUE = (
    select(service_requests, i.system.label("_system"), i.value.label("_value"))
    .join(service_request_identifiers, i.request_id == r.id)
    .where(r.channel == bindparam("channel"), i.value.in_(bindparam("values", expanding=True)))
    .order_by(r.id)
)
_INSERT = service_requests.insert()
_NEW_VERSION = (
    update(service_requests)
    .where(r.id == bindparam("_id"))
    .values(
        version=bindparam("_version"),
        sender=bindparam("_sender"),
        receiver=bindparam("_receiver"),
        status=bindparam("_status"),
        patient=bindparam("_patient"),
        message_id=bindparam("_message_id"),
        updated_at=bindparam("_updated_at"),
        resource=bindparam("_resource"),
    )
)
_IDENTIFIERS_OF = select(i.system, i.value).where(i.request_id == bindparam("request_id"))


def index(
    conn: Connection,
    channel: str,
    message_id: int,
    found: list[IndexedRequest],
    *,
    sender: str,
    receiver: str,
    now: datetime,
) -> None:
    """Record each ServiceRequest's latest version (inside the caller's transaction)."""
    if found:
        hold_key(conn, INDEX_LOCK)
    for item in found:
        row = _existing(conn, channel, item)
        values = {
            "status": item.status,
            "patient": item.patient,
            "message_id": message_id,
            "updated_at": now,
            "resource": json.dumps(item.resource),
        }
        if row is None:
            request_id = conn.execute(
                _INSERT,
                {
                    "channel": channel,
                    "resource_id": item.resource_id,
                    "sender": sender[:255],
                    "receiver": receiver[:255],
                    "version": 1,
                    **values,
                },
            ).inserted_primary_key[0]
            known: set[tuple[str, str]] = set()
        else:
            request_id = row.id
            conn.execute(
                _NEW_VERSION,
                {
                    "_id": row.id,
                    "_version": row.version + 1,
                    "_sender": row.sender or sender[:255],
                    "_receiver": row.receiver or receiver[:255],
                    **{f"_{name}": value for name, value in values.items()},
                },
            )
            known = {
                (x.system, x.value) for x in conn.execute(_IDENTIFIERS_OF, {"request_id": row.id})
            }
        new = [pair for pair in dict.fromkeys(item.identifiers) if pair not in known]
        insert_rows(
            conn,
            service_request_identifiers,
            [{"request_id": request_id, "system": s, "value": v} for s, v in new],
        )


def _existing(conn: Connection, channel: str, item: IndexedRequest) -> Any:
    """The registry row of ``item``: by its id, else the first sharing one of its identifiers."""
    by_id = conn.execute(_BY_ID, {"channel": channel, "resource_id": item.resource_id}).first()
    if by_id is not None or not item.identifiers:
        return by_id
    pairs = set(item.identifiers)
    values = sorted({value for _, value in pairs})
    for row in conn.execute(_BY_VALUE, {"channel": channel, "values": values}).all():
        if (row._system, row._value) in pairs:
            return row
    return None


def _any(tokens: tuple[Token, ...], match: Callable[[Token], ColumnElement[bool]]) -> Any:
    return or_(*(match(t) for t in tokens))


def _identifier(t: Token) -> ColumnElement[bool]:
    if t.code is None:
        return i.system == t.system
    value = i.value == t.code
    return value if t.system is None else and_(value, i.system == t.system)


def _patient(t: Token) -> ColumnElement[bool]:
    if t.system not in (None, NHS_NUMBER):
        return false()
    return r.patient != "" if t.code is None else r.patient == t.code


def _status(t: Token) -> ColumnElement[bool]:
    if t.system not in (None, REQUEST_STATUS):
        return false()
    return r.status != "" if t.code is None else r.status == t.code


def search(
    conn: Connection,
    channel: str,
    *,
    identifier: Criteria = (),
    patient: Criteria = (),
    status: Criteria = (),
    limit: int = 50,
    offset: int = 0,
    oldest_first: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Latest versions matching every group of every parameter (each group by any of its
    tokens), newest first (or oldest), at most ``limit`` after the first ``offset``; and
    how many match in all (``total``)."""
    query = select(service_requests).where(r.channel == channel)
    for group in identifier:
        query = query.where(r.id.in_(select(i.request_id).where(_any(group, _identifier))))
    for group in patient:
        query = query.where(_any(group, _patient))
    for group in status:
        query = query.where(_any(group, _status))
    total = conn.scalar(select(func.count()).select_from(query.subquery()))
    if oldest_first:
        query = query.order_by(r.updated_at, r.id)
    else:
        query = query.order_by(r.updated_at.desc(), r.id.desc())
    query = query.limit(min(limit, MAX_RESULTS)).offset(offset)
    return [dict(row._mapping) for row in conn.execute(query)], total


def read(conn: Connection, channel: str, resource_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        select(service_requests).where(r.channel == channel, r.resource_id == resource_id)
    ).first()
    return dict(row._mapping) if row else None


def as_resource(row: dict[str, Any]) -> dict[str, Any]:
    """The stored ServiceRequest, with tie's version and time in ``meta``."""
    resource = json.loads(row["resource"])
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(row["version"])
    meta["lastUpdated"] = row["updated_at"].isoformat()
    return {**resource, "meta": meta}


def searchset(
    rows: list[dict[str, Any]],
    total: int,
    base: str,
    links: dict[str, str],
    ignored: list[str],
) -> dict[str, Any]:
    """The Bundle; without ``entry`` when there are none (FHIR JSON has no empty arrays).
    Parameters ``ignored`` are named in an OperationOutcome entry, so that a client sees
    its search was wider than it asked (the ``self`` link leaves them out too)."""
    entries = [
        {
            "fullUrl": f"{base}/ServiceRequest/{row['resource_id']}",
            "resource": as_resource(row),
            "search": {"mode": "match"},
        }
        for row in rows
    ]
    if ignored:
        issues = [
            Issue("not-supported", f"unknown search parameter {name!r} ignored", severity="warning")
            for name in ignored
        ]
        entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": relation, "url": url} for relation, url in links.items()],
    }
    if entries:
        bundle["entry"] = entries
    return bundle
