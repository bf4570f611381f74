"""``run.py db backup FOLDER``: the store and its blobs, copied consistently while it runs.

A row names its blob only once the blob is in place (written, fsynced, renamed, before the
row's transaction commits), and blobs never change (they are named by their hash). So:

1. every blob already there is copied;
2. the database is copied at one instant: SQLite's online backup API in one step (a read
   transaction, which in WAL mode holds up no writer), or ``pg_dump`` (one snapshot);
3. the blobs the copy names that step 1 did not find (written meanwhile) are copied, and
   any the copy names that are in neither is reported, the backup then incomplete.

A blob the copy names was either listed in step 1 or written since (and is then younger
than retention's grace, REUSE_GRACE: not removable during a backup shorter than that). On
PostgreSQL step 3 reads the names from the live store, not the dump; the pruning lock, held
throughout, keeps the engines' retention and ``run.py prune`` from removing a row the dump
has meanwhile.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.engine import URL

from router.payload import CHUNK
from router.retention import pruning_lock
from router.store.blobs import fsync_dir
from router.store.database import Store

SQLITE_COPY = "tie.db"
POSTGRES_DUMP = "tie.dump"
BLOBS = "blobs"
# The blobs a store's rows name.
NAMED = (
    "SELECT blob_sha256 FROM messages WHERE blob_sha256 IS NOT NULL "
    "UNION SELECT blob_sha256 FROM deliveries WHERE blob_sha256 IS NOT NULL"
)


class BackupError(Exception):
    """The backup could not be made (the folder, pg_dump): nothing usable was written."""


@dataclass
class Backup:
    folder: Path
    database: Path
    blobs: int = 0
    blob_bytes: int = 0
    missing: list[str] = field(default_factory=list)  # named by the copy, found nowhere
    corrupt: list[str] = field(default_factory=list)  # whose content is not their hash


def back_up(store: Store, folder: Path) -> Backup:
    """Copy ``store`` and its blobs into ``folder``, which must not exist or be empty."""
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: back up into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    with pruning_lock(store) as leading:
        if not leading:
            raise BackupError("a node is pruning the store now: try again once it has finished")
        backup = Backup(folder, folder / (SQLITE_COPY if store.is_sqlite else POSTGRES_DUMP))
        copied = copy_blobs(store.blobs.root, folder / BLOBS, blob_files(store.blobs.root), backup)
        if store.is_sqlite:
            _copy_sqlite(store, backup.database)
            named = _named_in_sqlite(backup.database)
        else:
            _dump_postgres(store, backup.database)
            named = _named_in_postgres(store)
        later = sorted(named - copied)
        copy_blobs(store.blobs.root, folder / BLOBS, later, backup)
        backup.missing = sorted(h for h in later if not (folder / BLOBS / blob_path(h)).exists())
    fsync_dir(folder)
    return backup


def blob_path(sha256: str) -> Path:
    """Where blob ``sha256`` is kept, relative to a blob folder."""
    return Path(sha256[:2], sha256[2:4], sha256)


def blob_files(root: Path) -> list[str]:
    """The hashes of the blobs under ``root`` (not temporaries, nor blobs being discarded)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.glob("??/??/*") if len(p.name) == 64 and p.parent.parent.parent == root
    )


def copy_blobs(root: Path, target: Path, hashes: list[str], backup: Backup) -> set[str]:
    """Copy each blob, checked against its hash on the way; the hashes copied."""
    copied: set[str] = set()
    for sha256 in hashes:
        source, destination = root / blob_path(sha256), target / blob_path(sha256)
        destination.parent.mkdir(parents=True, exist_ok=True)
        part = destination.with_name(f"{sha256}.part")
        digest = hashlib.sha256()
        try:
            with open(source, "rb") as reading, open(part, "wb") as writing:
                for chunk in chunks(reading):
                    digest.update(chunk)
                    writing.write(chunk)
                writing.flush()
                os.fsync(writing.fileno())
        except FileNotFoundError:  # discarded since it was listed: no row names it
            part.unlink(missing_ok=True)
            continue
        if digest.hexdigest() != sha256:
            part.unlink()
            backup.corrupt.append(sha256)
            continue
        os.replace(part, destination)
        fsync_dir(destination.parent)
        shutil.copystat(source, destination)
        copied.add(sha256)
        backup.blobs += 1
        backup.blob_bytes += destination.stat().st_size
    return copied


def chunks(file: object) -> Iterator[bytes]:
    while block := file.read(CHUNK):  # type: ignore[attr-defined]
        yield block


def _copy_sqlite(store: Store, target: Path) -> None:
    """One consistent copy through SQLite's online backup API, in one step (page by page,
    every write by another connection would restart it), then made a single file."""
    part = target.with_name(f"{target.name}.part")
    source = sqlite3.connect(store.writer.url.database or "", timeout=60)
    try:
        copy = sqlite3.connect(part)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
    finally:
        source.close()
    with open(part, "rb") as written:
        os.fsync(written.fileno())
    os.replace(part, target)


def _named_in_sqlite(copy: Path) -> set[str]:
    with sqlite3.connect(copy) as conn:
        return {row[0] for row in conn.execute(NAMED)}


def libpq_url(url: URL) -> tuple[str, dict[str, str]]:
    """The store's URL as libpq's tools take it, and the environment holding its password
    (a password on a command line is seen by every user of the machine)."""
    plain = url.set(drivername="postgresql", password=None)
    env = {"PGPASSWORD": url.password} if url.password else {}
    return plain.render_as_string(hide_password=False), env


def _dump_postgres(store: Store, target: Path) -> None:
    """``pg_dump`` of the store (custom format, for ``pg_restore``): one snapshot."""
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump is not installed (the PostgreSQL client tools)")
    with store.read() as conn:
        schema = conn.scalar(text("SELECT current_schema()"))
    url, env = libpq_url(make_url(store.url))
    part = target.with_name(f"{target.name}.part")
    # A store in a schema of its own (search_path in the URL) is that schema. In ``public``,
    # the database: a dump of ``public`` alone would fail to create it again on restore.
    only = [] if schema == "public" else [f"--schema={schema}"]
    done = subprocess.run(
        ["pg_dump", "--format=custom", *only, f"--file={part}", url],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        part.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    with open(part, "rb") as written:
        os.fsync(written.fileno())
    os.replace(part, target)


def _named_in_postgres(store: Store) -> set[str]:
    """The blobs the live store names: every one the dump names (nothing is pruned meanwhile)."""
    with store.read() as conn:
        return set(conn.scalars(text(NAMED)))
