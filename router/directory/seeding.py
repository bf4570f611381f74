"""Seeding the directory from ``endpoints.yaml``, as the engine does on start.

Apart from ``router.gateway`` so that ``run.py endpoints`` and ``check`` need not import
the FHIR gateway (FastAPI, aiohttp) to read the file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from router.directory.entries import Endpoint, load_endpoints_file
from router.directory.records import seed
from router.store.database import Store

log = logging.getLogger(__name__)


def read_endpoints(path: Path) -> list[Endpoint] | None:
    """The endpoints of ``path``, or None when there is no such file (ConfigError if broken)."""
    if not path.is_file():
        log.info("no %s: the endpoint directory is left as it is", path)
        return None
    return load_endpoints_file(path)


def seed_from_file(store: Store, path: Path) -> None:
    """Seed from ``path`` when it exists; a ConfigError names what is wrong in it."""
    wanted = read_endpoints(path)
    if wanted is not None:
        seed_endpoints(store, path, wanted)


def seed_endpoints(store: Store, path: Path, wanted: list[Endpoint]) -> None:
    result = seed(store, wanted)
    if result.added or result.updated or result.removed:
        log.info(
            "endpoint directory seeded from %s: %d added, %d updated, %d removed",
            path,
            result.added,
            result.updated,
            result.removed,
        )
