"""Where a payload is kept: inline in its row, or in the blob store above the threshold.

The one decision for every path that writes a message's body or a delivery's payload: the
group-commit writer (MLLP, FHIR, MESH), BaRS exchanges, the booking proxy, the channel
destination, ``run.py send`` and processing. A payload above ``blobs.threshold`` is hashed,
written and fsynced before the transaction of the row that names it begins (DESIGN.md
§3.5), outside it: inline, a 9 MB body made a 9 MB row, held up the commit every other
sender waits for, and was copied again into its delivery.
"""

from __future__ import annotations

import asyncio

from router.payload import Payload
from router.store.blobs import BlobStore
from router.store.database import StoreUnavailable


def is_large(blobs: BlobStore, data: bytes | Payload) -> bool:
    """Whether ``data`` would be kept inline and is above the threshold (a blob stays one)."""
    if isinstance(data, Payload):
        return not data.is_blob and data.size > blobs.threshold
    return len(data) > blobs.threshold


def placed(blobs: BlobStore, data: bytes | Payload) -> bytes | Payload:
    """``data`` as a row should hold it: itself when small (or a blob already), else written
    durably to the blob store. A store that cannot write it is unavailable, as one that
    cannot commit: the sender gets its negative answer."""
    if not is_large(blobs, data):
        return data
    try:
        return blobs.put(data)
    except OSError as exc:
        raise StoreUnavailable(f"blob store: {exc.strerror or exc}") from exc


async def placed_off_loop(blobs: BlobStore, data: bytes | Payload) -> bytes | Payload:
    """``placed`` for the event loop: a large payload is written in a worker thread (hashing,
    writing and fsyncing all let the loop run meanwhile)."""
    if not is_large(blobs, data):
        return data
    return await asyncio.to_thread(placed, blobs, data)
