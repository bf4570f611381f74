"""Synchronous exchanges (BaRS routing, the booking proxy) stored in the common status model.

A synchronous exchange is one message with one delivery and one attempt, like any other
(docs/fhir.md#synchronous-exchanges): the message is what the sender sent, the delivery
what tie forwarded to whom (``address``), the attempt the receiver's answer. The
delivery's destination is ``forward`` (BaRS) or ``provider`` (proxy): no dispatcher
worker has those names, so the dispatcher never sends one; the exchange itself does,
once, while the sender waits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

from sqlalchemy import ColumnElement, Connection, and_, bindparam, exists, or_, select, update

from router.fhir import registry
from router.fhir.bars import ANSWERABLE, LINKING, IndexedRequest
from router.payload import as_payload
from router.store.database import Store
from router.store.fast_insert import insert_rows
from router.store.inbound import Inbound, release_validated, utcnow, write_inbound
from router.store.schema import attempts, correlations, deliveries, messages

log = logging.getLogger(__name__)
FORWARD = "forward"  # a BaRS message forwarded to its target
PROVIDER = "provider"  # a proxied request to a provider
SYNCHRONOUS = (FORWARD, PROVIDER)
d = deliveries.c
c = correlations.c


@dataclass(frozen=True)
class Opened:
    message_id: int
    delivery_id: int
    uuid: str
    conversation: str | None


@dataclass(frozen=True)
class Registration:
    """ServiceRequests to index with the message, and the referral's parties."""

    requests: list[IndexedRequest]
    sender: str
    receiver: str


# Statements built once: building one and computing its cache key costs more than running it.
_MESSAGE_ID = select(messages.c.id).where(messages.c.uuid == bindparam("uuid"))
_INSERT_DELIVERY = deliveries.insert()
_SETTLE = (
    update(deliveries)
    .where(d.id == bindparam("_id"))
    .values(
        status=bindparam("_status"),
        attempts=1,
        last_error=bindparam("_error"),
        lease_until=None,
        lease_owner=None,
        updated_at=bindparam("_now"),
    )
)
_CANCEL = (
    update(deliveries)
    .where(
        d.message_id == bindparam("_message"),
        d.destination.in_(SYNCHRONOUS),
        d.status == "sending",
    )
    .values(
        status="cancelled",
        last_error=bindparam("_error"),
        lease_until=None,
        lease_owner=None,
        updated_at=bindparam("_now"),
    )
)
_hit, _joined = correlations.alias("hit"), correlations.alias("joined")
# Any message sharing a value, and its conversation: one index probe, however many share it.
_CONVERSATION = (
    select(_joined.c.value)
    .select_from(_hit)
    .join(
        _joined,
        and_(_joined.c.message_id == _hit.c.message_id, _joined.c.key == "conversation"),
    )
    .where(_hit.c.value.in_(bindparam("values", expanding=True)), _hit.c.key.in_(LINKING))
    .limit(1)
)


def open_exchange(
    conn: Connection,
    item: Inbound,
    *,
    destination: str,
    address: str,
    owner: str,
    lease: float,
    keys: list[tuple[str, str]],
    conversation: bool = False,
    outcome: Outcome | None = None,
) -> Opened:
    """Store the message (as ``item.status`` says: BaRS opens it ``validating`` while its
    models are checked, see ``accept_message``) and its delivery with its correlation keys
    in the caller's transaction. The delivery is ``sending``, leased to
    ``owner``, until ``close_exchange``; or settled at once with ``outcome`` (the proxy,
    which records an exchange when it is over)."""
    now = utcnow()
    body = as_payload(item.raw)  # the delivery names the message's blob, if it has one
    write_inbound(conn, [item])
    message_id = item.id  # told by the insert on SQLite; looked up where it is not
    if message_id is None:
        message_id = conn.scalar(_MESSAGE_ID, {"uuid": item.uuid})
    row = {
        "message_id": message_id,
        "channel": item.channel,
        "destination": destination,
        "status": "sending",
        "content_type": item.content_type,
        "payload": body.inline,
        "blob_sha256": body.sha256 if body.is_blob else None,
        "blob_size": body.size if body.is_blob else None,
        "idempotency_key": item.control_id,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": now + timedelta(seconds=lease),
        "lease_owner": owner,
        "created_at": now,
        "updated_at": now,
        "last_error": None,
        "address": address[:1024],
    }
    if outcome is not None:
        row.update(
            status=outcome.status,
            attempts=1,
            lease_until=None,
            lease_owner=None,
            last_error=outcome.error,
        )
    delivery_id = conn.execute(_INSERT_DELIVERY, row).inserted_primary_key[0]
    if outcome is not None:
        insert_rows(conn, attempts, [outcome.attempt(delivery_id)])
    joined = None
    if conversation:
        joined = _conversation(conn, keys)
        keys = [*keys, ("conversation", joined)]
    insert_rows(
        conn,
        correlations,
        [{"message_id": message_id, "key": k, "value": v} for k, v in dict.fromkeys(keys)],
    )
    return Opened(message_id, delivery_id, item.uuid, joined)


def _conversation(conn: Connection, keys: list[tuple[str, str]]) -> str:
    """The conversation of a message sharing a linking key with this one, else a new one."""
    linking = [value for key, value in keys if key in LINKING]
    if linking:
        found = conn.scalar(_CONVERSATION, {"values": linking})
        if found:
            return found
    return f"urn:tie:conversation:{uuid4()}"


@dataclass(frozen=True)
class Outcome:
    """How an exchange ended: its one attempt, ``sent`` or ``failed`` (never retried)."""

    sent: bool
    started_at: datetime
    duration_ms: float
    response: bytes | None
    error: str | None

    @property
    def status(self) -> str:
        return "sent" if self.sent else "failed"

    def attempt(self, delivery_id: int) -> dict[str, Any]:
        return {
            "delivery_id": delivery_id,
            "number": 1,
            "started_at": self.started_at,
            "duration_ms": self.duration_ms,
            "outcome": self.status,
            "response": self.response,
            "error": self.error,
        }


def close_exchange(conn: Connection, delivery_id: int, outcome: Outcome) -> None:
    """The attempt and the delivery's outcome, once the receiver has answered (or not)."""
    insert_rows(conn, attempts, [outcome.attempt(delivery_id)])
    conn.execute(
        _SETTLE,
        {
            "_id": delivery_id,
            "_status": outcome.status,
            "_error": outcome.error,
            "_now": utcnow(),
        },
    )


def accept_message(
    conn: Connection, item: Inbound, registration: Registration | None, message_id: int | None
) -> bool:
    """A message opened ``validating`` whose models passed becomes ``processed``, and its
    ServiceRequests go into the registry (which keeps only what passed validation).
    Whether it was still validating (the recovery of another node may have taken it)."""
    message_id = _released(conn, item, "processed", None, message_id)
    if message_id is None:
        return False
    if registration is not None and registration.requests:
        registry.index(
            conn,
            item.channel,
            message_id,
            registration.requests,
            sender=registration.sender,
            receiver=registration.receiver,
            now=utcnow(),
        )
    return True


def refuse_exchange(
    conn: Connection, item: Inbound, reason: str, message_id: int | None = None
) -> bool:
    """A message opened ``validating`` whose models failed is an ``error`` with ``reason``,
    and its delivery, never forwarded, ``cancelled``. Whether it was still validating."""
    message_id = _released(conn, item, "error", reason, message_id)
    if message_id is None:
        return False
    conn.execute(
        _CANCEL,
        {"_message": message_id, "_error": f"not forwarded: {reason}"[:1000], "_now": utcnow()},
    )
    return True


def _released(
    conn: Connection, item: Inbound, status: str, error: str | None, message_id: int | None
) -> int | None:
    """Give a ``validating`` message ``status``; its row id (looked up when not known), or
    None when it was no longer validating."""
    item.status, item.error = status, error
    if not release_validated(conn, [item])[0]:
        return None
    return message_id if message_id is not None else conn.scalar(_MESSAGE_ID, {"uuid": item.uuid})


def in_flight(message_id: ColumnElement[Any], now: datetime) -> ColumnElement[bool]:
    """Whether an exchange of the message ``message_id`` names is still under way: its
    delivery ``sending`` under a lease that has not run out."""
    return exists().where(
        d.message_id == message_id,
        d.destination.in_(SYNCHRONOUS),
        d.status == "sending",
        d.lease_until > now,
    )


def fail_interrupted(store: Store, owner: str) -> int:
    """Exchanges this node left ``sending`` when it stopped (or any whose lease ran out) are
    ``failed``: their senders got no answer and send again. Run before the dispatcher
    releases this node's leases."""
    now = utcnow()
    with store.begin() as conn:
        return conn.execute(
            update(deliveries)
            .where(
                d.destination.in_(SYNCHRONOUS),
                d.status == "sending",
                or_(d.lease_owner == owner, and_(d.lease_until.is_not(None), d.lease_until < now)),
            )
            .values(
                status="failed",
                last_error="interrupted: the engine stopped during the exchange; "
                "the sender got no answer from tie",
                lease_until=None,
                lease_owner=None,
                updated_at=now,
            )
        ).rowcount


def find_original(conn: Connection, channel: str, answered: str) -> Any:
    """The earliest message of ``channel`` whose Bundle.id or MessageHeader.id is
    ``answered`` (a response's MessageHeader.response.identifier), with its source."""
    return conn.execute(
        select(messages.c.id, messages.c.uuid, messages.c.source)
        .join(correlations, c.message_id == messages.c.id)
        .where(c.key.in_(ANSWERABLE), c.value == answered, messages.c.channel == channel)
        .order_by(messages.c.id)
        .limit(1)
    ).first()


def conversation_messages(conn: Connection, value: str, limit: int = 500) -> list[dict[str, Any]]:
    """Every message of the conversation(s) of the messages that have ``value`` as a key."""
    m = messages.c
    direct = select(c.message_id).where(c.value == value)
    conversations = select(c.value).where(c.key == "conversation", c.message_id.in_(direct))
    members = select(c.message_id).where(c.key == "conversation", c.value.in_(conversations))
    query = (
        select(
            m.id, m.uuid, m.channel, m.received_at, m.status, m.message_type, m.control_id, m.sender
        )
        .where(or_(m.id.in_(direct), m.id.in_(members), m.control_id == value))
        .order_by(m.id)
        .limit(limit)
    )
    return [dict(row._mapping) for row in conn.execute(query)]
