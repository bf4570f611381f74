"""``run.py db restore FOLDER``: a backup made by ``run.py db backup`` put back in place of
the store engine.yaml names, checked before anything is changed and after.

Before: the backup is whole (its database; every blob its database names is there, and each
blob's content is its hash: blobs are named by their SHA-256, so the backup carries what
verifies it), of this store's kind and of a schema this version knows; no engine runs
against the store (router/store/presence.py), which the restore holds against engines from
this check to its end; a store holding messages is replaced only with ``force``. The blobs
are copied (and hashed) into a folder beside the store's before the database is touched, so
a bad blob stops the restore with the store unchanged.

Then the database: SQLite's file is replaced (the one there moved aside, not deleted);
PostgreSQL's is restored by ``pg_restore --clean`` in one transaction (all or nothing).
The blob folder is swapped in (the one there moved aside). After: every blob the restored
store names is there with its hash, the schema is migrated as an engine would, and the
restore is an audit event appended to the restored chain (which still verifies).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import delete, func, inspect, make_url, select, text

from router import audit
from router.config import safe_store_url
from router.store.backup import (
    BLOBS,
    NAMED,
    POSTGRES_DUMP,
    SQLITE_COPY,
    Backup,
    blob_files,
    blob_path,
    chunks,
    copy_blobs,
    libpq_url,
)
from router.store.blobs import fsync_dir
from router.store.database import Store
from router.store.migrate import Applied, alembic_config, upgrade
from router.store.presence import StoreInUse, held_postgres, held_sqlite
from router.store.schema import engine_presence, messages


class RestoreError(Exception):
    """The restore was refused or failed; what it says was (or was not) changed."""


@dataclass
class Contents:
    """What a backup folder holds, checked."""

    database: Path
    revisions: list[str]  # the schema's alembic revisions
    named: set[str]  # the blobs its database names
    schema: str | None = None  # PostgreSQL: the schema the dump holds


@dataclass
class Restored:
    folder: Path
    database: str
    blobs: int = 0
    blob_bytes: int = 0
    replaced: list[str] = field(default_factory=list)  # what the store held, and where it went
    migrations: list[Applied] = field(default_factory=list)


def restore(
    store: Store, folder: Path, *, actor: str, force: bool = False, engines_stopped: bool = False
) -> Restored:
    """Put the backup in ``folder`` in place of ``store`` (not migrated, not in use).
    ``engines_stopped``: the operator knows the engines seen lately are not running."""
    folder = folder.resolve()
    contents = _read_backup(folder, store.is_sqlite, store.url)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    done = Restored(folder, _sqlite_file(store) if store.is_sqlite else safe_store_url(store.url))
    with _held(store, engines_stopped) as held:
        existing = _messages(held, store)
        if existing and not force:
            raise RestoreError(
                f"the store holds {existing} message(s): --force replaces them (and its "
                f"blobs) with the backup's. Nothing was changed."
            )
        if existing:
            done.replaced.append(f"{existing} message(s) in the store")
        staging = _stage_blobs(folder, store.blobs.root, done)
        try:
            if store.is_sqlite:
                _replace_sqlite(contents.database, Path(_sqlite_file(store)), stamp, done)
            else:
                _restore_postgres(store, contents, held)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_blobs(staging, store.blobs.root, stamp, done)
        # Still held: an engine starting now would run on (or migrate) a store half restored.
        store.dispose()  # SQLite: connections opened before the file was replaced
        _verify_blobs(store)
        done.migrations = upgrade(store)
        with store.begin() as conn:
            # The backup's engines (and those of the replaced store) are not running here.
            conn.execute(delete(engine_presence))
            audit.append(
                conn,
                actor,
                "restore",
                "store",
                {"folder": str(folder), "replaced": done.replaced, "blobs": done.blobs},
            )
    return done


def _sqlite_file(store: Store) -> str:
    return str(Path(make_url(store.url).database or "").resolve())


def _read_backup(folder: Path, sqlite: bool, url: str) -> Contents:
    """The backup's contents, or RestoreError when it is not whole or not for this store."""
    if not folder.is_dir():
        raise RestoreError(f"{folder} is not a folder")
    mine, other = (SQLITE_COPY, POSTGRES_DUMP) if sqlite else (POSTGRES_DUMP, SQLITE_COPY)
    database = folder / mine
    if not database.is_file():
        kind = "SQLite" if sqlite else "PostgreSQL"
        if (folder / other).is_file():
            raise RestoreError(f"{folder} holds {other}, a backup of the other kind of store")
        raise RestoreError(f"{folder} has no {mine}: not a backup of a {kind} store")
    contents = _read_sqlite(database) if sqlite else _read_dump(database)
    _refuse_newer(contents.revisions, url)
    missing = sorted(h for h in contents.named if not (folder / BLOBS / blob_path(h)).is_file())
    if missing:
        raise RestoreError(
            f"the backup is incomplete: {len(missing)} blob(s) its database names are not in "
            f"{folder / BLOBS} (first {missing[0]}). Nothing was changed."
        )
    return contents


def _read_sqlite(database: Path) -> Contents:
    try:
        reading = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in reading.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise RestoreError(
                    f"the backup's database {database} is damaged: {problems[0]}. Nothing "
                    f"was changed."
                )
            named = {row[0] for row in reading.execute(NAMED)}
            revisions = [
                row[0] for row in reading.execute("SELECT version_num FROM alembic_version")
            ]
        finally:
            reading.close()
    except sqlite3.DatabaseError as exc:
        raise RestoreError(
            f"the backup's database {database} is damaged, or not a tie store: {exc}. "
            f"Nothing was changed."
        ) from exc
    return Contents(database, revisions, named)


_COPY = re.compile(r"^COPY (\S+) \((.*)\) FROM stdin;$")
_TABLE = re.compile(r"^\d+; \d+ \d+ TABLE (\S+) messages ")
# The column read from each table of a dump: the blobs named, the schema's revisions.
_READ = {"messages": "blob_sha256", "deliveries": "blob_sha256", "alembic_version": "version_num"}


def _read_dump(dump: Path) -> Contents:
    """The dump's schema, revisions and named blobs, read by ``pg_restore`` (its table of
    contents, then the data of three tables as COPY text) without restoring anything."""
    if shutil.which("pg_restore") is None:
        raise RestoreError("pg_restore is not installed (the PostgreSQL client tools)")
    listing = _pg_restore(["--list", str(dump)])
    schemas = [m.group(1) for line in listing.splitlines() if (m := _TABLE.match(line))]
    if not schemas:
        raise RestoreError(f"{dump} holds no tie store (no messages table)")
    read: dict[str, set[str]] = {table: set() for table in _READ}
    values: set[str] | None = None  # the table being read's
    for line in _copy_text(dump):
        if values is None:
            if match := _COPY.match(line):
                table = match.group(1).rsplit(".", 1)[-1].strip('"')
                names = [name.strip('"') for name in match.group(2).split(", ")]
                column, values = names.index(_READ[table]), read[table]
        elif line == "\\.":
            values = None
        elif (value := line.split("\t")[column]) != "\\N":
            values.add(value)
    named = read["messages"] | read["deliveries"]
    return Contents(dump, sorted(read["alembic_version"]), named, schemas[0])


def _copy_text(dump: Path) -> Iterator[str]:
    """The data of the tables ``_READ`` names as COPY text, line by line: streamed, since
    the messages' inline payloads come with it (its errors go to a file, not a pipe that
    could fill while stdout is read)."""
    tables = [f"--table={table}" for table in _READ]
    with tempfile.TemporaryFile("w+") as errors:
        with subprocess.Popen(
            ["pg_restore", "--data-only", *tables, "--file=-", str(dump)],
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            errors="replace",
        ) as reading:
            assert reading.stdout is not None
            for line in reading.stdout:
                yield line.rstrip("\n")
        if reading.returncode != 0:
            errors.seek(0)
            raise RestoreError(f"pg_restore failed: {errors.read().strip()}")


def _pg_restore(arguments: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["pg_restore", *arguments],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RestoreError(f"pg_restore failed: {done.stderr.strip()}")
    return done.stdout


def _refuse_newer(revisions: list[str], url: str) -> None:
    script = ScriptDirectory.from_config(alembic_config(url))
    known = {s.revision for s in script.walk_revisions()}
    unknown = sorted(r for r in revisions if r not in known)
    if unknown:
        raise RestoreError(
            f"the backup's schema is newer than this version of tie (migration(s) "
            f"{', '.join(unknown)}): restore it with the version that made it. Nothing was "
            f"changed."
        )


@contextmanager
def _held(store: Store, engines_stopped: bool) -> Iterator[Any]:
    """The store, held against engines for the restore (router/store/presence.py): the
    PostgreSQL connection that holds it, or None (SQLite)."""
    try:
        if store.is_sqlite:
            with held_sqlite(Path(_sqlite_file(store))):
                yield None
            return
        with store.writer.connect() as conn, held_postgres(conn, engines_stopped):
            yield conn
    except StoreInUse as exc:
        raise RestoreError(f"{exc}. Nothing was changed.") from exc


def _messages(conn: Any, store: Store) -> int:
    """How many messages the store holds (0 when it has no tables yet)."""
    if store.is_sqlite:
        database = Path(_sqlite_file(store))
        if not database.exists():
            return 0
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as reading:
            has = reading.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'messages'"
            ).fetchone()[0]
            count = reading.execute("SELECT count(*) FROM messages").fetchone()[0] if has else 0
        reading.close()
        return int(count)
    if conn.scalar(text("SELECT current_schema()")) is None or not inspect(conn).has_table(
        "messages"
    ):
        conn.rollback()
        return 0
    count = conn.scalar(select(func.count()).select_from(messages))
    conn.rollback()  # no lock of ours on the tables pg_restore drops
    return int(count or 0)


def _stage_blobs(folder: Path, root: Path, done: Restored) -> Path:
    """The backup's blobs copied beside the store's blob folder, each checked against its
    hash on the way; RestoreError (and nothing left) when one is not its hash."""
    staging = root.with_name(f".{root.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tally = Backup(folder, folder)
    source = folder / BLOBS
    copy_blobs(source, staging, blob_files(source), tally)
    if tally.corrupt:
        shutil.rmtree(staging)
        raise RestoreError(
            f"the backup is damaged: {len(tally.corrupt)} blob(s) whose content is not their "
            f"hash (first {tally.corrupt[0]}). Nothing was changed."
        )
    done.blobs, done.blob_bytes = tally.blobs, tally.blob_bytes
    fsync_dir(staging)
    return staging


def _replace_sqlite(copy: Path, database: Path, stamp: str, done: Restored) -> None:
    """The backup's file in place of the store's, which is moved aside (as a single file:
    ``take_sqlite`` has checkpointed its ``-wal``)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    part = database.with_name(f"{database.name}.restoring")
    shutil.copyfile(copy, part)
    with open(part, "rb") as written:
        os.fsync(written.fileno())
    if database.exists():
        aside = _aside(database, stamp)
        os.replace(database, aside)
        done.replaced.append(f"database file moved to {aside}")
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    os.replace(part, database)
    fsync_dir(database.parent)


def _restore_postgres(store: Store, contents: Contents, conn: Any) -> None:
    """``pg_restore`` of the dump into the store's database, replacing what the dump holds,
    in one transaction. The dump's schema must be the store's: it is restored by name."""
    schema = conn.scalar(text("SELECT coalesce(current_schema(), current_setting('search_path'))"))
    conn.rollback()
    if contents.schema != schema:
        raise RestoreError(
            f"the backup holds schema {contents.schema!r}, the store is in {schema!r} "
            f"(search_path in the store's URL): restore into a store of the same schema. "
            f"Nothing was changed."
        )
    url, env = libpq_url(make_url(store.url))
    _pg_restore(
        [
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={url}",
            str(contents.database),
        ],
        env,
    )


def _swap_blobs(staging: Path, root: Path, stamp: str, done: Restored) -> None:
    """The staged blobs become the store's blob folder; the one there is moved aside."""
    if root.exists():
        aside = _aside(root, stamp)
        os.replace(root, aside)
        done.replaced.append(f"blob folder moved to {aside}")
    os.replace(staging, root)
    fsync_dir(root.parent)


def _aside(path: Path, stamp: str) -> Path:
    """A name beside ``path`` for what a restore replaces, taken by no earlier restore."""
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    return aside


def _verify_blobs(store: Store) -> None:
    """Every blob the restored store names is in its blob folder, with its hash."""
    with store.read() as conn:
        named = sorted(conn.scalars(text(NAMED)))
    bad = [h for h in named if _hash_of(store.blobs.root / blob_path(h)) != h]
    if bad:
        raise RestoreError(
            f"after the restore, {len(bad)} blob(s) the store names are missing or damaged "
            f"in {store.blobs.root} (first {bad[0]})"
        )


def _hash_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as reading:
            for chunk in chunks(reading):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()
