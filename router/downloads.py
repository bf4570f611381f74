"""The whole content of a message or a delivery, for download.

Detail views show the first 64 KiB of a payload (``router.store.queries.PREVIEW``); an
operator who needs the rest (a 9 MB ORU with its PDF, a large Bundle) downloads it here,
from the console or the API. Reading it is a ``view`` of patient data like the detail
view, audited in the transaction that reads it. It is sent as an attachment of type
``application/octet-stream``: the content is hostile input and no browser should render it.
A blob is streamed from its file, so a gigabyte MESH download is never held in memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import Connection, select

from router import audit
from router.payload import Payload
from router.store.blobs import BlobStore
from router.store.database import Store
from router.store.queries import find_message_id
from router.store.schema import deliveries, messages

_SUFFIX = {"hl7v2": "hl7", "fhir+json": "json", "application/json": "json"}


@dataclass(frozen=True)
class Download:
    filename: str
    payload: Payload


def message_download(
    conn: Connection, ref: str, blobs: BlobStore, *, actor: str, via: str
) -> Download | None:
    """Message ``ref``'s whole content, its reading by ``actor`` audited; None if unknown."""
    message_id = find_message_id(conn, ref)
    if message_id is None:
        return None
    m = messages.c
    row = conn.execute(
        select(m.uuid, m.content_type, m.raw, m.blob_sha256, m.size).where(m.id == message_id)
    ).one()
    details = {"via": via, "whole": True}
    audit.append(conn, actor, "view", f"urn:tie:message:{row.uuid}", details)
    payload = blobs.payload(row.raw, row.blob_sha256, row.size)
    return Download(_name(f"message-{message_id}", row.content_type), payload)


def delivery_download(
    conn: Connection, delivery_id: int, blobs: BlobStore, *, actor: str, via: str
) -> Download | None:
    """Delivery ``delivery_id``'s whole payload, audited as a view of its message."""
    d, m = deliveries.c, messages.c
    row = conn.execute(
        select(m.uuid, d.content_type, d.payload, d.blob_sha256, d.blob_size)
        .join(messages, m.id == d.message_id)
        .where(d.id == delivery_id)
    ).first()
    if row is None:
        return None
    details = {"via": via, "whole": True, "delivery": delivery_id}
    audit.append(conn, actor, "view", f"urn:tie:message:{row.uuid}", details)
    payload = blobs.payload(row.payload, row.blob_sha256, row.blob_size or 0)
    return Download(_name(f"delivery-{delivery_id}", row.content_type), payload)


async def message_response(store: Store, ref: str, *, actor: str, via: str) -> Response:
    """Message ``ref``'s whole content as an attachment (404 if unknown); audited."""

    def load() -> Download | None:
        with store.begin() as conn:
            return message_download(conn, ref[:80], store.blobs, actor=actor, via=via)

    found = await asyncio.to_thread(load)
    if found is None:
        raise HTTPException(404, f"no message {ref}")
    return response(found)


async def delivery_response(store: Store, delivery_id: int, *, actor: str, via: str) -> Response:
    """Delivery ``delivery_id``'s whole payload as an attachment (404 if unknown); audited."""

    def load() -> Download | None:
        with store.begin() as conn:
            return delivery_download(conn, delivery_id, store.blobs, actor=actor, via=via)

    found = await asyncio.to_thread(load)
    if found is None:
        raise HTTPException(404, f"no delivery {delivery_id}")
    return response(found)


def response(download: Download) -> Response:
    """The download as an attachment: inline bytes at once, a blob streamed from its file."""
    headers = {
        "Content-Disposition": f'attachment; filename="{download.filename}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Length": str(download.payload.size),
    }
    media = "application/octet-stream"
    if not download.payload.is_blob:
        return Response(download.payload.inline, media_type=media, headers=headers)
    return StreamingResponse(download.payload.chunks(), media_type=media, headers=headers)


def _name(stem: str, content_type: str) -> str:
    return f"{stem}.{_SUFFIX.get(content_type, 'bin')}"
