"""Retention: each channel's finished messages go once they are older than it keeps them.

A channel says ``retention: {keep: 90d, archive: ../archive}``; the engine prunes every
``retention.every`` (engine.yaml, default 1 h) on one node at a time, and ``run.py prune``
prunes by hand (refusing while a node prunes). Which messages may go is
router.store.retention's rule: never work that is unfinished or failed. Each batch is
read; with ``archive``, written to ``<archive>/<channel>/<time>-<first id>-<last
id>.jsonl.gz`` (blobs beside it under ``blobs/``) and fsynced; then removed in one
transaction with its audit event (``retention.prune``); then the blobs no row names any
more are discarded. A batch whose removal fails after its archive was written is archived
again by the next run: an archive may hold a message twice, but never misses one that was
removed.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from router import audit, metrics
from router.config import ChannelConfig
from router.store.blobs import write_durably
from router.store.database import Store, Transact
from router.store.idempotency import expire as expire_keys
from router.store.inbound import utcnow
from router.store.leader import leader
from router.store.retention import (
    Removed,
    archive_records,
    count_removable,
    referenced_blobs,
    removable_ids,
    remove,
)

log = logging.getLogger(__name__)
SYSTEM_ACTOR = "tie-retention"


@dataclass
class Pruned:
    """What pruning one channel removed (or, in a preview, would remove: ``messages``)."""

    channel: str
    before: datetime
    messages: int = 0
    deliveries: int = 0
    attempts: int = 0
    jobs: int = 0
    batches: int = 0
    blobs: int = 0
    archives: list[str] = field(default_factory=list)


class Pruner:
    """Prunes channels in batches of ``batch`` messages; ``transact`` runs each removal
    (on SQLite the engine's group commit, so no sender waits on a second writer)."""

    def __init__(
        self,
        store: Store,
        *,
        batch: int = 500,
        actor: str = SYSTEM_ACTOR,
        transact: Transact[Any] | None = None,
    ) -> None:
        self._store = store
        self._batch = batch
        self._actor = actor
        self._transact = transact or store.run
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Stop after the batch in hand."""
        self._stopping.set()

    def preview(self, channel: ChannelConfig, now: datetime | None = None) -> Pruned:
        """How many messages pruning ``channel`` now would remove; nothing changes."""
        before = _cutoff(channel, now)
        with self._store.read() as conn:
            return Pruned(
                channel.name, before, messages=count_removable(conn, channel.name, before)
            )

    def prune(self, channel: ChannelConfig, now: datetime | None = None) -> Pruned:
        before = _cutoff(channel, now)
        done = Pruned(channel.name, before)
        while not self._stopping.is_set() and self._prune_batch(channel, before, done):
            pass
        if done.messages:
            log.info(
                "retention: removed %d message(s) of %s received before %s",
                done.messages,
                channel.name,
                before.isoformat(),
            )
        return done

    def _prune_batch(self, channel: ChannelConfig, before: datetime, done: Pruned) -> bool:
        """Archive and remove the next batch; False when none was left."""
        assert channel.retention is not None
        with self._store.read() as conn:
            ids = removable_ids(conn, channel.name, before, self._batch)
            records = archive_records(conn, ids) if ids and channel.retention.archive else []
        if not ids:
            return False
        archive = None
        if channel.retention.archive is not None:
            archive = write_archive(channel.retention.archive, channel.name, records, self._store)
            done.archives.append(str(archive))
        removed = self._transact(self._removal(channel.name, before, ids, archive))
        metrics.PRUNED.labels(channel.name).inc(removed.messages)
        done.messages += removed.messages
        done.deliveries += removed.deliveries
        done.attempts += removed.attempts
        done.jobs += removed.jobs
        done.batches += removed.batches
        done.blobs += self._discard(removed.blobs)
        return True

    def _removal(
        self, channel: str, before: datetime, ids: list[int], archive: Path | None
    ) -> Callable[[Any], Removed]:
        def work(conn: Any) -> Removed:
            removed = remove(conn, channel, before, ids)
            if removed.messages:
                details = {
                    "messages": removed.messages,
                    "deliveries": removed.deliveries,
                    "attempts": removed.attempts,
                    "jobs": removed.jobs,
                    "hold_batches": removed.batches,
                    "received_before": before.isoformat(),
                    "ids": [min(ids), max(ids)],
                    "archive": str(archive) if archive else None,
                }
                audit.append(conn, self._actor, "retention.prune", f"channel:{channel}", details)
            return removed

        return work

    def expire_idempotency_keys(self, now: datetime | None = None) -> int:
        """Delete the API's replay idempotency keys past their lifetime (they are not
        messages: no channel's ``keep`` applies); how many."""
        moment = now or utcnow()
        return self._transact(lambda conn: expire_keys(conn, moment))

    def _discard(self, hashes: set[str]) -> int:
        """Remove the blob files of ``hashes`` that no row names any more."""
        if not hashes:
            return 0
        with self._store.read() as conn:
            unnamed = hashes - referenced_blobs(conn, hashes)
        return sum(self._store.blobs.discard(sha256) for sha256 in sorted(unnamed))


def pruning_lock(store: Store) -> AbstractContextManager[bool]:
    """Whether this node may prune ``store`` now: one node at a time, the engine's schedule
    on every node and ``run.py prune`` alike (a lock of this store's own, on PostgreSQL)."""
    return leader(store, "tie-retention", own=True)


def _cutoff(channel: ChannelConfig, now: datetime | None) -> datetime:
    if channel.retention is None:
        raise ValueError(f"channel {channel.name} has no retention policy")
    return (now or utcnow()) - timedelta(seconds=channel.retention.keep)


def write_archive(folder: Path, channel: str, records: list[dict[str, Any]], store: Store) -> Path:
    """Write ``records`` durably as gzipped JSON Lines (and their blobs); the file's path."""
    first, last = records[0]["message"]["id"], records[-1]["message"]["id"]
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    target = folder / channel / f"{stamp}-{first}-{last}.jsonl.gz"

    def lines(file: BinaryIO) -> None:
        with gzip.GzipFile(fileobj=file, mode="wb") as zipped:
            for record in records:
                zipped.write(json.dumps(record, default=str).encode("utf-8") + b"\n")

    write_durably(target, lines)
    for sha256 in sorted(_blob_hashes(records)):
        copy = folder / "blobs" / sha256
        if not copy.exists():
            with open(store.blobs.path(sha256), "rb") as source:
                write_durably(copy, partial(shutil.copyfileobj, source))
    return target


def _blob_hashes(records: list[dict[str, Any]]) -> set[str]:
    hashes = {r["message"]["blob_sha256"] for r in records}
    hashes |= {d["blob_sha256"] for r in records for d in r["deliveries"]}
    return {h for h in hashes if h}
