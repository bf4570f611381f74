"""Messages left ``validating``: checked again and released.

A FHIR message is committed as ``validating`` while its models are validated beside the
commit (router.fhir.intake). If the engine stops between the two, or the release cannot
be written, the message stays ``validating``: nothing routes it, and no sender was told
it was refused. The gateway looks for such messages every few seconds and checks them
again as their endpoint would, once they are older than any validation still running
(``GRACE``; on PostgreSQL another node may be validating a younger one) and no exchange
holds a live lease on their delivery (a BaRS message stays ``validating`` while it is
forwarded, which its channel's ``timeout`` may let last longer than the grace).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from router.config.http import HttpSource
from router.fhir import FHIR_JSON
from router.fhir.exchange import in_flight
from router.fhir.intake import Checked, FhirRequest, Release, rejected_reason
from router.fhir.outcome import Rejected
from router.pipeline import CompiledChannel
from router.store.database import Store
from router.store.inbound import VALIDATING, Inbound, utcnow
from router.store.schema import messages

log = logging.getLogger(__name__)
GRACE = 60.0  # seconds: longer than any validation still running
BATCH = 100
LOCK_TIMEOUT_MS = 5000
# Checks a request again, shape and models; raises Rejected.
Check = Callable[[FhirRequest], Awaitable[Checked]]


@dataclass(frozen=True, slots=True)
class Stranded:
    """A message left ``validating``, its body read (from its blob, above the threshold)."""

    uuid: str
    channel: str
    raw: bytes
    source: str | None
    received_at: datetime
    # Why it cannot be checked again (its blob file is missing): released as an error.
    unreadable: str | None = None


def stranded(store: Store, grace: float = GRACE) -> list[Stranded]:
    """Messages ``validating`` for longer than ``grace`` seconds whose delivery, if any, no
    exchange holds a live lease on, oldest first."""
    m = messages.c
    now = utcnow()
    with store.read() as conn:
        if conn.dialect.name == "postgresql":
            # A look the next pass makes again: it must not wait behind another session's
            # lock, and with it the engine's stop, which waits for it (LOCK TABLE messages).
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
        rows = list(
            conn.execute(
                select(m.uuid, m.channel, m.raw, m.blob_sha256, m.size, m.source, m.received_at)
                .where(
                    m.status == VALIDATING,
                    m.received_at < now - timedelta(seconds=grace),
                    ~in_flight(m.id, now),
                )
                .order_by(m.id)
                .limit(BATCH)
            )
        )
    return [_read(store, row) for row in rows]


def _read(store: Store, row: Any) -> Stranded:
    """The row with its body; one whose blob file is missing, without (it cannot be checked
    again, and left as it was it failed every pass of the recovery, the others' too)."""
    body = store.blobs.payload(bytes(row.raw), row.blob_sha256, row.size)
    try:
        return Stranded(row.uuid, row.channel, body.read(), row.source, row.received_at)
    except FileNotFoundError:
        unreadable = (
            f"its body ({row.size} bytes, blob {row.blob_sha256}) is missing from the blob "
            "store; not validated"
        )
        log.error("message %s left validating: %s", row.uuid, unreadable)
        return Stranded(row.uuid, row.channel, b"", row.source, row.received_at, unreadable)


async def recover(
    rows: list[Stranded], channels: dict[str, CompiledChannel], check: Check, release: Release
) -> int:
    """Check ``rows`` (from ``stranded``) again and release each; how many were released."""
    released = 0
    for row in rows:
        item, request = _restored(row, channels)
        if row.unreadable is not None:
            reason = row.unreadable
        elif request is None:
            reason = f"channel {row.channel} no longer takes FHIR messages; not validated"
        else:
            try:
                await check(request)
                reason = None
            except Rejected as exc:
                if exc.status == 503:  # no validation worker now: the next pass tries again
                    continue
                reason = rejected_reason(exc)
        if await asyncio.wrap_future(release(item, reason)):
            released += 1
    if released:
        log.warning("%d message(s) left validating were checked again and released", released)
    return released


def _restored(
    row: Stranded, channels: dict[str, CompiledChannel]
) -> tuple[Inbound, FhirRequest | None]:
    """The stored message as an Inbound, and the request its endpoint received (None when
    its channel no longer has a FHIR source)."""
    source = json.loads(row.source) if row.source else {}
    raw = row.raw
    item = Inbound(
        row.channel,
        raw,
        content_type=FHIR_JSON,
        source=source,
        received_at=row.received_at,
        uuid=row.uuid,
        status=VALIDATING,
    )
    channel = channels.get(row.channel)
    http: HttpSource | None = channel.config.source.http if channel is not None else None
    if http is None:
        return item, None
    path = str(source.get("path", ""))
    operation = path.rsplit("/", 1)[-1]
    message = operation == "$process-message"
    return item, FhirRequest(
        row.channel,
        http,
        "process-message" if message else "create",
        raw,
        source.get("headers", {}),
        str(source.get("remote", "")),
        path,
        None if message else operation,
    )
