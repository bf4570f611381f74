"""The store an engine.yaml names, opened without the rest of the engine.

Apart from ``router.engine`` so that the CLI's store-only commands (``messages``, ``show``,
``prune``...) do not import the gateway, FastAPI and every connector just to read the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from router.config import EngineConfig
from router.store.blobs import BlobStore, default_blob_root
from router.store.database import Store

log = logging.getLogger(__name__)


def open_store(config: EngineConfig) -> Store:
    """The store with the engine's SQLite settings and blob folder."""
    blobs = config.blobs
    root = blobs.directory or default_blob_root(config.store, config.base_dir)
    if blobs.directory is None and not config.store.startswith("sqlite"):
        _warn_of_earlier_default(root)
    return Store(
        config.store,
        synchronous=config.sqlite.synchronous,
        busy_timeout=config.sqlite.busy_timeout,
        blobs=BlobStore(root, blobs.threshold),
    )


def _warn_of_earlier_default(root: Path) -> None:
    """Before, the blobs of a PostgreSQL store defaulted to ``data/blobs`` under the working
    folder: an engine upgraded in place would not find the large payloads kept there."""
    earlier = Path("data/blobs").resolve()
    if earlier != root and earlier.is_dir() and not root.exists():
        log.warning(
            "blobs are kept in %s (data/blobs in engine.yaml's folder), but %s holds blobs "
            "of an earlier version, which kept them under the working folder: set "
            "blobs.directory: %s in engine.yaml, or move them",
            root,
            earlier,
            earlier,
        )
