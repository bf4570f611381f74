"""The store an engine.yaml names, opened without the rest of the engine.

Apart from ``router.engine`` so that the CLI's store-only commands (``messages``, ``show``,
``prune``...) do not import the gateway, FastAPI and every connector just to read the store.
"""

from __future__ import annotations

from router.config import EngineConfig
from router.store.blobs import BlobStore, default_blob_root
from router.store.database import Store


def open_store(config: EngineConfig) -> Store:
    """The store with the engine's SQLite settings and blob folder."""
    blobs = config.blobs
    return Store(
        config.store,
        synchronous=config.sqlite.synchronous,
        busy_timeout=config.sqlite.busy_timeout,
        blobs=BlobStore(blobs.directory or default_blob_root(config.store), blobs.threshold),
    )
