"""Paths that store a message in a transaction of their own, not through the group-commit
writer (the channel destination, ``run.py send`` to a channel without a socket), place its
body as the writer does (router.store.placement): above the blob threshold, a blob in
place before the row that names it commits, and the row a few hundred bytes."""

from __future__ import annotations

import asyncio
from hashlib import sha256
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tie_testing import channel, engine_config

from router.cli.sending import _inject
from router.config import ChannelTarget
from router.connectors import Delivery
from router.connectors.channel import ChannelSender
from router.store.blobs import BlobStore, default_blob_root
from router.store.database import Store
from router.store.schema import messages

LARGE = (
    b"MSH|^~\\&|EPR|HOSP|LAB|HOSP|20240101||OML^O21|BIG1|P|2.5.1\r"
    + b"OBX|1|TX|||"
    + b"x" * 4096
    + b"\r"
)


def _stored(store: Store, control_id: str) -> Any:
    with store.read() as conn:
        return conn.execute(
            select(messages.c.raw, messages.c.size, messages.c.blob_sha256).where(
                messages.c.control_id == control_id
            )
        ).one()


def _assert_a_blob(store: Store, control_id: str, body: bytes) -> None:
    row = _stored(store, control_id)
    assert (row.raw, row.size, row.blob_sha256) == (b"", len(body), sha256(body).hexdigest())
    assert store.blobs.path(row.blob_sha256).read_bytes() == body


def test_a_channel_destination_feeds_a_large_message_on_as_a_blob(store, tmp_path):
    store.blobs = BlobStore(tmp_path / "blobs", threshold=1024)
    sender = ChannelSender(ChannelTarget(channel="next"), store)
    delivery = Delivery(7, 1, "a-uuid", "entry", "next", LARGE, "hl7v2", "", None, 0)
    assert asyncio.run(sender.send(delivery)).outcome == "sent"
    _assert_a_blob(store, "BIG1", LARGE)


def test_run_py_send_to_a_channel_without_a_socket_stores_a_large_message_as_a_blob(
    store, store_url, tmp_path
):
    config = engine_config(tmp_path, store_url, blobs={"threshold": "1KB"})
    store.blobs = BlobStore(default_blob_root(store_url, tmp_path))  # where run.py writes them
    fed = channel({"name": "fed", "source": {"channel": {}}})
    [answer] = _inject(config, fed, [(Path("big.hl7"), [LARGE])])
    assert answer["ack"] == "stored"
    _assert_a_blob(store, "BIG1", LARGE)
