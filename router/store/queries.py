"""Searches and detail views over the store, shared by the CLI and the HTTP API.

Every filter is served by an index (channel/status/time, MSH-9, MSH-10,
correlation value). Text search is bounded to a time window so it never scans
the whole table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    LargeBinary,
    Select,
    Table,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
)

from router.store.blobs import BlobStore
from router.store.flags import flags_of
from router.store.inbound import SENDER_KEYS, utcnow
from router.store.schema import attempts, correlations, deliveries, message_flags, messages

m = messages.c
TEXT_WINDOW = timedelta(days=1)
EARLIEST = datetime.min.replace(tzinfo=UTC)
MAX_ID = 2**63 - 1  # the largest id column value (BIGINT on PostgreSQL, INTEGER on SQLite)
MAX_NUMBER = 2**31 - 1  # the largest Integer column value (a revision's number)
PREVIEW = 64 * 1024  # bytes of a payload shown in a detail view
LISTING = (
    m.id,
    m.uuid,
    m.channel,
    m.received_at,
    m.status,
    m.message_type,
    m.control_id,
    m.sender,
    m.size,
    m.error,
)

# The statuses a search may ask for (any other value would match nothing, which reads as
# "none of those"); deliveries in the order an operator looks for them, trouble first.
MESSAGE_STATUSES = ("received", "validating", "processed", "filtered", "error")
DELIVERY_STATUSES = (
    "failed",
    "retrying",
    "queued",
    "sending",
    "held",
    "sent",
    "resent",
    "cancelled",
)


@dataclass
class MessageFilter:
    channel: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    message_type: str | None = None
    control_id: str | None = None
    key: str | None = None
    text: str | None = None
    flag: str | None = None
    # Messages with a delivery in this status (of ``channel``'s when given): a message
    # whose delivery failed is ``processed``, with no error of its own.
    delivery_status: str | None = None
    before_id: int | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        """A time without a zone is UTC, as everywhere in the store."""
        for name in ("since", "until"):
            moment = getattr(self, name)
            if moment is not None and moment.tzinfo is None:
                setattr(self, name, moment.replace(tzinfo=UTC))


def search_query(f: MessageFilter, dialect: str, columns: tuple[Any, ...] = LISTING) -> Select[Any]:
    """Newest first; ``before_id`` is the cursor for the next page."""
    since = f.since
    if f.text and since is None:
        since = max(f.until or utcnow(), EARLIEST + TEXT_WINDOW) - TEXT_WINDOW
    newest = m.id
    if since and f.until:
        # A closed window is read through the received-time index and its rows sorted: in
        # id order PostgreSQL walked the primary key back from the newest message, through
        # every row after the window (most of a million for a window a month ago).
        newest = m.id + literal_column("0")
    query = select(*columns).order_by(newest.desc())
    if f.channel:
        query = query.where(m.channel == f.channel)
    if f.status:
        query = query.where(m.status == f.status)
    if since:
        window = m.received_at >= since
        if f.text and dialect == "sqlite":
            # The window is what bounds a content search: without the hint SQLite reads
            # newest first through the whole table for the matches a page wants.
            window = func.likelihood(window, literal_column("0.000001"))
        query = query.where(window)
    if f.until:
        query = query.where(m.received_at < f.until)
    if f.message_type:
        # A LIKE prefix: PostgreSQL's index compares bytewise (text_pattern_ops) to serve it.
        kind = f.message_type
        prefixed = m.message_type.startswith(f"{kind}^", autoescape=True)  # % and _ are literal
        query = query.where(or_(m.message_type == kind, prefixed))
    if f.control_id:
        query = query.where(m.control_id == f.control_id)
    if f.key:
        query = query.where(m.id.in_(_keyed(f.key)))
    if f.flag:
        flagged = select(message_flags.c.message_id).where(message_flags.c.flag == f.flag)
        query = query.where(m.id.in_(flagged))
    if f.delivery_status:
        d = deliveries.c
        having = select(d.message_id).where(d.status == f.delivery_status)
        if f.channel:
            having = having.where(d.channel == f.channel)
        query = query.where(m.id.in_(having))
    if f.text:
        needle = f.text.encode("utf-8")
        if dialect == "postgresql":
            query = query.where(
                text("position(:needle in messages.raw) > 0").bindparams(needle=needle)
            )
        else:
            query = query.where(func.instr(m.raw, needle) > 0)
    if f.before_id:
        query = query.where(m.id < f.before_id)
    return query.limit(f.limit)


def _keyed(key: str) -> CompoundSelect[Any]:
    """Ids of the messages ``key`` names: by a correlation value, MSH-10 or UUID.

    One set of ids, each part from its own index: PostgreSQL scans the whole messages
    table, newest first, for ``id IN (...) OR control_id = ...`` (3 s on a million).
    """
    other = messages.alias("keyed")
    return union_all(
        select(correlations.c.message_id).where(correlations.c.value == key),
        select(other.c.id).where(other.c.control_id == key),
        select(other.c.id).where(other.c.uuid == key),
    )


def search(conn: Connection, f: MessageFilter) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in conn.execute(search_query(f, conn.dialect.name))]


def with_delivery_counts(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (found messages), each given ``deliveries``: its deliveries counted by
    status, so a listing shows the message whose delivery failed beside those sent."""
    by_message: dict[int, dict[str, int]] = {r["id"]: {} for r in rows}
    if by_message:
        d = deliveries.c
        for message_id, status, count in conn.execute(
            select(d.message_id, d.status, func.count())
            .where(d.message_id.in_(by_message))
            .group_by(d.message_id, d.status)
        ):
            by_message[message_id][status] = count
    for row in rows:
        row["deliveries"] = by_message[row["id"]]
    return rows


def parse_id(text: str, most: int = MAX_ID) -> int | None:
    """``text`` as a number from 1 to ``most`` written in ASCII digits, else None.

    ``str.isdigit`` alone also takes digits ``int`` refuses (``²``), and a number past
    ``MAX_ID`` overflows the database's integer: either was an error 500, not a miss.
    """
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(most)):
        return None
    number = int(text)
    return number if 1 <= number <= most else None


def find_message_id(conn: Connection, ref: str) -> int | None:
    """A message by number, UUID or ``urn:tie:message:<uuid>``."""
    ref = ref.removeprefix("urn:tie:message:")
    number = parse_id(ref)
    if number is not None:
        return conn.scalar(select(m.id).where(m.id == number))
    return conn.scalar(select(m.id).where(m.uuid == ref))


def message_detail(
    conn: Connection, message_id: int, blobs: BlobStore | None = None
) -> dict[str, Any] | None:
    """The message with its raw content, deliveries, attempts, keys and related messages.

    A payload is shown by its first ``PREVIEW`` bytes (``raw_truncated`` /
    ``payload_truncated`` say when there is more, ``payload_size`` how much there is):
    one kept in the blob store read through ``blobs``, one kept inline cut by the
    database, so a detail view never loads a gigabyte file nor a 10 MB MLLP frame.
    """
    row = conn.execute(_previewed(messages, "raw").where(m.id == message_id)).first()
    if row is None:
        return None
    detail = dict(row._mapping)
    _preview(detail, "raw", detail["blob_sha256"], detail["size"], blobs)
    detail["source"] = json.loads(detail["source"]) if detail["source"] else None
    d = deliveries.c
    query = _previewed(deliveries, "payload", func.length(d.payload).label("payload_size"))
    detail["deliveries"] = [
        dict(r._mapping)
        for r in conn.execute(query.where(d.message_id == message_id).order_by(d.id))
    ]
    by_delivery: dict[int, list[dict[str, Any]]] = {x["id"]: [] for x in detail["deliveries"]}
    if by_delivery:
        for a in conn.execute(
            select(attempts).where(attempts.c.delivery_id.in_(by_delivery)).order_by(attempts.c.id)
        ):
            by_delivery[a.delivery_id].append(dict(a._mapping))
    for delivery in detail["deliveries"]:
        delivery["attempt_log"] = by_delivery[delivery["id"]]
        # A resend's copy belongs to the same message: link the old delivery forward too.
        delivery["resent_as"] = [
            x["id"] for x in detail["deliveries"] if x["resent_from"] == delivery["id"]
        ]
        if delivery["blob_sha256"] is not None:
            delivery["payload_size"] = delivery["blob_size"]
        _preview(delivery, "payload", delivery["blob_sha256"], delivery["blob_size"], blobs)
    keys = [
        dict(r._mapping)
        for r in conn.execute(
            select(correlations.c.key, correlations.c.value).where(
                correlations.c.message_id == message_id
            )
        )
    ]
    detail["correlations"] = keys
    detail["flags"] = flags_of(conn, message_id)
    linked = [message_id] + ([row.reprocessed_from] if row.reprocessed_from else [])
    conversation = [k["value"] for k in keys if k["key"] not in SENDER_KEYS]
    detail["timeline"] = timeline(conn, conversation, linked)
    return detail


def _previewed(table: Table, column: str, *extra: ColumnElement[Any]) -> Select[Any]:
    """``table``'s row with only the first ``PREVIEW`` + 1 bytes of ``column`` (one more
    than is shown tells ``_preview`` that there is more)."""
    head = func.substr(table.c[column], 1, PREVIEW + 1, type_=LargeBinary).label(column)
    return select(*(c if c.name != column else head for c in table.c), *extra)


def _preview(
    record: dict[str, Any], key: str, sha256: str | None, size: int | None, blobs: BlobStore | None
) -> None:
    if sha256 is None or blobs is None:
        inline = record[key]
        record[f"{key}_truncated"] = inline is not None and len(inline) > PREVIEW
        if record[f"{key}_truncated"]:
            record[key] = _whole_characters(inline[:PREVIEW])
        return
    head = blobs.payload(b"", sha256, size or 0).head(PREVIEW)
    record[f"{key}_truncated"] = (size or 0) > PREVIEW
    record[key] = _whole_characters(head) if record[f"{key}_truncated"] else head


def _whole_characters(head: bytes) -> bytes:
    """``head`` less the start of a UTF-8 character that the cut split: UTF-8 text cut
    mid-character would no longer decode, and the API would show it as base64. Anything
    else (Latin-1, binary) is left as it is."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            return head[: exc.start]
    return head


def timeline(conn: Connection, values: list[str], linked: list[int]) -> list[dict[str, Any]]:
    """Messages sharing a correlation value, and replays of or from ``linked``, oldest first.

    Each message carries its flags and its deliveries, each with its last attempt's answer
    (e.g. the laboratory's ACK to an order), so one list tells the conversation's story.
    """
    other = messages.alias("linked")
    # One set of ids, each part from its own index (an OR of them scans on PostgreSQL).
    related = union_all(
        select(correlations.c.message_id).where(correlations.c.value.in_(values)),
        select(other.c.id).where(other.c.id.in_(linked)),
        select(other.c.id).where(other.c.reprocessed_from.in_(linked)),
    )
    query = (
        select(m.id, m.uuid, m.channel, m.received_at, m.status, m.message_type, m.control_id)
        .where(m.id.in_(related))
        .order_by(m.id)
        .limit(500)
    )
    rows = [dict(r._mapping) for r in conn.execute(query)]
    ids = [r["id"] for r in rows]
    flags: dict[int, list[str]] = {i: [] for i in ids}
    sent: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        f = message_flags.c
        for message_id, flag in conn.execute(
            select(f.message_id, f.flag).where(f.message_id.in_(ids)).order_by(f.flag)
        ):
            flags[message_id].append(flag)
        for delivery in _timeline_deliveries(conn, ids):
            sent[delivery.pop("message_id")].append(delivery)
    for row in rows:
        row["flags"] = flags[row["id"]]
        row["deliveries"] = sent[row["id"]]
    return rows


def _timeline_deliveries(conn: Connection, message_ids: list[int]) -> list[dict[str, Any]]:
    """The messages' deliveries, each with its last attempt's time, outcome and answer."""
    d, a = deliveries.c, attempts.c
    last = (
        select(func.max(a.id)).where(a.delivery_id == d.id).correlate(deliveries).scalar_subquery()
    )
    query = (
        select(
            d.message_id,
            d.id,
            d.destination,
            d.status,
            d.address,
            d.attempts,
            d.last_error,
            a.started_at.label("attempted_at"),
            a.outcome,
            a.response,
        )
        .select_from(deliveries.outerjoin(attempts, a.id == last))
        .where(d.message_id.in_(message_ids))
        .order_by(d.id)
    )
    found = []
    for r in conn.execute(query):
        row = dict(r._mapping)
        row["answer"] = answer_summary(row.pop("response"))
        found.append(row)
    return found


def answer_summary(response: bytes | None) -> str | None:
    """A short reading of a receiver's answer: ``AA`` for an HL7 ACK, a MESH message id..."""
    if not response:
        return None
    text = response[:4096].decode("utf-8", errors="replace")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")[1] or None
    try:
        answer = json.loads(text)
    except ValueError:
        return text[:80]
    if isinstance(answer, dict) and answer.get("mesh_message_id"):
        return f"MESH {answer['mesh_message_id']} to {answer.get('to', '?')}"
    return text[:80]
