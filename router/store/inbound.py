"""What a source received, and how it is stored: the messages row, with the idempotent
receiver's check.

Sources build an ``Inbound`` per message; the group-commit writer (router.store.ingest)
stores batches of them with ``write_inbound``, as do the sources that write in a
transaction of their own (the MESH poller, the channel destination, the FHIR proxy).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, select

from router import metrics
from router.hl7v2.header import MshHeader
from router.payload import Payload, as_payload
from router.store.fast_insert import insert_rows
from router.store.schema import correlations, messages

_INSERT = messages.insert()  # built once: SQLAlchemy caches its compiled form by this object
_IDS_OF = select(messages.c.uuid, messages.c.id).where(
    messages.c.uuid.in_(bindparam("uuids", expanding=True))
)
# Stored, its checks still running (FHIR validation runs beside the commit): the processor
# leaves it until ``release_validated`` makes it received, settled or an error.
VALIDATING = "validating"
_OPEN = ("received", VALIDATING)
_RELEASE = (
    messages.update()
    .where(messages.c.uuid == bindparam("b_uuid"), messages.c.status == VALIDATING)
    .values(
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        processed_at=bindparam("b_at"),
        revision=bindparam("b_revision"),
    )
)

# A repeat (stored ``filtered``, ``duplicate_of`` set) whose own checks refused it: its
# sender was told so, and a refused message is no original, so nor is this a duplicate.
_REFUSED_REPEAT = (
    messages.update()
    .where(
        messages.c.uuid == bindparam("b_uuid"),
        messages.c.status == "filtered",
        messages.c.duplicate_of.is_not(None),
    )
    .values(status="error", error=bindparam("b_error"), duplicate_of=None)
)


# Correlation keys that name who sent a message, not its conversation: searchable, but kept
# out of the correlation timeline, where they would link every message of that sender.
TLS_CLIENT_KEY = "tls_client"  # an MLLP sender's verified certificate subject
SSP_FROM_KEY = "ssp_from"  # the booking proxy's caller (its Ssp-From ASID)
SENDER_KEYS = frozenset({TLS_CLIENT_KEY, SSP_FROM_KEY})


def utcnow() -> datetime:
    return datetime.now(UTC)


def time_ordered_uuid() -> str:
    """A version 7 UUID (RFC 9562) as text: the millisecond it was made, then 74 random bits.

    A message's UUID is the store's unique key, so each one made is an index entry in the
    commit that stores it. Made in time order, the entries of one commit fall on the same
    leaf page or two of that index, where random (version 4) ones fell on a page each:
    eight messages committed together through the bare driver took about 10-25 % less time,
    and the engine wrote 11 % fewer bytes a message at eight connections
    (docs/performance.md, tenth round). Built from bytes rather than through ``uuid.UUID``,
    which goes through a 128-bit integer and validates its arguments: for every message a
    source receives, that was a measurable share of the listener's work.
    """
    data = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    data[6] = data[6] & 0x0F | 0x70  # version 7
    data[8] = data[8] & 0x3F | 0x80  # RFC 9562 variant
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
    uuid: str = field(default_factory=time_ordered_uuid)
    # Set by a Settler at submission: the message is stored with this outcome. Cleared when
    # the message turns out a duplicate or its channel is paused: the processor decides then.
    outcome: Decided | None = None
    # The MSH its source read (HL7 v2 sources): deciding on receipt need not read it again.
    header: MshHeader | None = None
    # Its row id once stored, where the insert told it (router.store.fast_insert.insert_rows).
    id: int | None = None
    # Correlation keys stored with it at once (a FHIR caller's X-Request-Id), for a request
    # that may never reach a pipeline (a refusal) to be found by them all the same.
    keys: tuple[tuple[str, str], ...] = ()
    # What ``control_id`` is (a FHIR source: Bundle.id), as a repeat's reason names it.
    control_field: str = "MSH-10"


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the store committed: the answer to send, and the original for a duplicate."""

    uuid: str
    ack: bytes | None
    duplicate_of: str | None = None


def write_inbound(conn: Connection, items: list[Inbound]) -> list[Receipt]:
    """Insert ``items`` in one transaction, recognising repeats (idempotent receiver).

    An item with an ``outcome`` is stored with it (settled), unless it is a duplicate.
    """
    receipts: list[Receipt] = []
    rows: list[dict[str, Any]] = []
    stored: list[Inbound] = []  # the items of ``rows``
    late: list[tuple[dict[str, Any], str, Inbound]] = []  # repeats of an item in this batch
    first_in_batch: dict[tuple[str, str | None, str], Inbound] = {}
    now = utcnow()  # one time for the batch: its SQLite text is then made once
    for item in items:
        row = _row(item, now)
        original = _find_original(conn, item, first_in_batch)
        if original is None:
            rows.append(row)
            stored.append(item)
            receipts.append(Receipt(item.uuid, item.ack))
            continue
        original_uuid, original_id, original_ack = original
        item.outcome = None
        row.update(
            status="filtered",
            processed_at=now,
            revision=None,
            ack=original_ack,
            error=f"duplicate of {original_uuid}: {item.control_field} {item.control_id!r} "
            f"from {item.sender or 'unknown sender'} already received",
        )
        if original_id is None:
            late.append((row, original_uuid, item))
        else:
            row["duplicate_of"] = original_id
            rows.append(row)
            stored.append(item)
        receipts.append(Receipt(item.uuid, original_ack, duplicate_of=original_uuid))
    if rows:
        row_id = insert_rows(conn, messages, rows)  # told for a single row, else None
        for item in stored:  # so no item keeps an id from an insert that was rolled back
            item.id = row_id
        _insert_keys(conn, [item for item in stored if item.keys])
    for row, original_uuid, _ in late:
        row["duplicate_of"] = conn.scalar(
            select(messages.c.id).where(messages.c.uuid == original_uuid)
        )
        conn.execute(_INSERT, row)
    # A repeat keeps its own keys (a caller's X-Request-Id) like any stored request, so the
    # id its sender was answered with finds it, also when it came with its original.
    _insert_keys(conn, [item for _, _, item in late if item.keys])
    metrics.count_messages(_counted([*rows, *(row for row, _, _ in late)]))
    return receipts


def _insert_keys(conn: Connection, items: list[Inbound]) -> None:
    """The correlation keys of ``items``, just inserted (their ids looked up in one query
    where the insert did not tell them)."""
    if not items:
        return
    ids = {item.uuid: item.id for item in items if item.id is not None}
    unknown = [item.uuid for item in items if item.id is None]
    if unknown:
        ids.update((row.uuid, row.id) for row in conn.execute(_IDS_OF, {"uuids": unknown}))
    rows = [
        {"message_id": ids[item.uuid], "key": key, "value": value}
        for item in items
        for key, value in dict.fromkeys(item.keys)
    ]
    insert_rows(conn, correlations, rows)


def _find_original(
    conn: Connection, item: Inbound, first_in_batch: dict[tuple[str, str | None, str], Inbound]
) -> tuple[str, int | None, bytes | None] | None:
    if not item.idempotency_window or not item.control_id or item.status not in _OPEN:
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


def _row(item: Inbound, now: datetime) -> dict[str, Any]:
    body = as_payload(item.raw)
    outcome = item.outcome
    if outcome is not None:
        status, error, processed_at = outcome.status, outcome.reason, now
    else:
        status, error = item.status, item.error
        processed_at = item.received_at if item.status not in _OPEN else None
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
        "revision": outcome.revision if outcome is not None else None,
    }


def release_validated(conn: Connection, items: list[Inbound]) -> list[bool]:
    """Give messages stored ``validating`` their status now that their checks are done
    (``item.status``: received or error; or ``item.outcome`` when settled on release);
    for each, whether it was still validating (an item that was not loses its outcome).
    A repeat stored as a duplicate that its checks refused becomes that error too."""
    now = utcnow()
    done: list[bool] = []
    for item in items:
        outcome = item.outcome
        status, error = (outcome.status, outcome.reason) if outcome else (item.status, item.error)
        params = {
            "b_status": status,
            "b_error": error,
            "b_at": None if status == "received" else now,
            "b_revision": outcome.revision if outcome else None,
            "b_uuid": item.uuid,
        }
        released = conn.execute(_RELEASE, params).rowcount == 1
        if not released and status == "error":
            conn.execute(_REFUSED_REPEAT, {"b_uuid": item.uuid, "b_error": error})
        if not released:
            item.outcome = None
        elif status != "received":
            metrics.count_messages([(item.channel, status)])
        done.append(released)
    return done


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


def _counted(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    """(channel, status) for the metrics: every row is received; a reject is an error, a
    duplicate filtered, as well."""
    for row in rows:
        yield row["channel"], "received"
        if row["status"] not in _OPEN:
            yield row["channel"], row["status"]
