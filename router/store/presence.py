"""Whether an engine runs against a store: ``run.py db restore`` must not replace a store
under a running engine, whose next write would go into the replaced one (or half of each).

- SQLite: every engine holds a shared OS lock on ``<database>.engine-lock`` from start
  (before it migrates the store) to stop; a restore holds it exclusively from its first
  check to its end (router/store/file_lock.py). Holding it, the restore also switches the
  file to a rollback journal, which SQLite allows only when no other connection (of any
  process: a ``run.py`` command too) has it open, and which checkpoints and removes its
  ``-wal``, as a file about to be replaced needs.
- PostgreSQL: each engine holds a shared session advisory lock named after the store (its
  schema) from start to stop; a restore takes it exclusively. A session lock ends with its
  session, so an engine killed with ``kill -9`` holds nothing; a running engine whose
  session the server ended takes it again (router/presence_keeper.py). Until it has, only
  its row in ``engine_presence`` says it runs: refreshed with each check on the server's
  clock (``now()``, so the hosts' clocks do not matter), it keeps a restore out while it is
  fresher than a few checks, even once the restore holds the lock. A row not seen for a day
  (an engine killed, its host lost) is deleted by the other engines' checks.

Other ``run.py`` commands hold no lock: one running during a restore reads either store.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, delete, func, insert, make_url, select, text, update
from sqlalchemy.exc import DBAPIError

from router.store import file_lock
from router.store.database import Store
from router.store.schema import engine_presence

_KEY = text("SELECT hashtextextended(current_schema() || '/engine', 0)")
# The messages table's OID: a restore (pg_restore --clean) drops and creates it anew.
_TABLES = text("SELECT to_regclass('messages')::oid")
_HELD = text(
    "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
    "AND mode = 'ShareLock' AND granted AND ((classid::bigint << 32) | objid::bigint) = :k"
)


# A row not seen for this long is an engine gone (killed, or its host lost): PostgreSQL's
# lock check deletes it. Far beyond ``fresh_for`` (seconds), which keeps a restore out.
STALE_AFTER = 24 * 3600.0
_PRUNE = text(
    "DELETE FROM engine_presence WHERE id <> :me "
    "AND seen_at + make_interval(secs => greatest(fresh_for, :stale)) < now()"
)

# The engines seen recently enough to be running, by the server's clock.
_FRESH = text(
    "SELECT host, pid, extract(epoch FROM now() - seen_at) AS ago FROM engine_presence "
    "WHERE seen_at + make_interval(secs => fresh_for) > now() ORDER BY host, pid"
)


class StoreInUse(Exception):
    """An engine runs against the store (or a restore of it is running)."""


class StoreReplaced(StoreInUse):
    """The store was restored while the engine did not hold its lock."""


def sqlite_file(store: Store) -> Path | None:
    """The SQLite store's database file; None in memory (no other process can see it)."""
    database = make_url(store.url).database or ""
    return None if database in ("", ":memory:") else Path(database).resolve()


class EngineLock:
    """The engine lock of one engine: on SQLite the lock file's, held until the stop.

    A session lock ends with its session: after a server restart or a terminated backend
    the engine runs on (its pools reconnect) but holds nothing, and a restore would be let
    in. ``held`` says whether the session still holds it; ``take`` takes it again on a new
    connection (router/presence_keeper.py checks every few seconds), and says whether a
    restore replaced the store in between.

    ``announce`` records the engine in ``engine_presence``, and each check and take (on
    PostgreSQL) marks it seen, fresh for ``fresh_for`` seconds."""

    def __init__(self, store: Store, fresh_for: float) -> None:
        self._store = store
        self._fresh_for = fresh_for
        self._id = uuid.uuid4().hex
        self._announced = False
        self._file: int | None = None  # SQLite: the lock file, held
        self._conn: Connection | None = None
        self._key: int | None = None
        self._tables: int | None = None  # the store's, when the lock was first taken
        # A check cut short by the stop may still be running in its thread.
        self._using = threading.Lock()

    def take(self) -> None:
        """StoreInUse when a restore holds the store, StoreReplaced when one replaced it
        since the lock was first taken; DBAPIError when the server cannot be reached."""
        if self._store.is_sqlite:
            self._take_file()
            return
        with self._using:
            self._take()

    def _take_file(self) -> None:
        database = sqlite_file(self._store)
        if self._file is not None or database is None:
            return
        self._file = file_lock.try_lock(database, exclusive=False)
        if self._file is None:
            raise StoreInUse(
                f"a restore of this store is running (run.py db restore holds "
                f"{file_lock.lock_path(database)}): start the engine once it has finished"
            )

    def _take(self) -> None:
        conn = self._store.writer.connect()
        try:
            key = conn.scalar(_KEY)
            got = conn.scalar(text("SELECT pg_try_advisory_lock_shared(:k)"), {"k": key})
            tables = conn.scalar(_TABLES)
            if got and self._announced:
                self._seen(conn)
            conn.commit()
        except BaseException:
            conn.invalidate()  # never back to the pool holding the lock
            conn.close()
            raise
        if not got:
            conn.close()
            raise StoreInUse(
                "a restore of this store is running (run.py db restore): start the engine "
                "once it has finished"
            )
        if self._key is not None and tables != self._tables:
            conn.invalidate()  # the session ends, and the lock with it: not back to the pool
            conn.close()
            raise StoreReplaced(
                "the store was replaced (run.py db restore) while this engine did not hold "
                "its engine lock: start the engine again to run on the restored store"
            )
        self._conn, self._key, self._tables = conn, key, tables

    def held(self) -> bool:
        """Whether this engine's session still holds the lock (always on SQLite). A session
        that fails the check is ended, so that whatever it still held goes with it."""
        if self._store.is_sqlite:
            return True
        with self._using:
            return self._held()

    def _held(self) -> bool:
        if self._conn is None:
            return False
        try:
            held = bool(self._conn.scalar(_HELD, {"k": self._key}))
            if held:
                self._seen(self._conn)
            self._conn.commit()
        except DBAPIError:
            self._drop()
            return False
        if not held:
            self._drop()
        return held

    def announce(self) -> None:
        """Record this engine as running (once the store is migrated and the lock taken).
        SQLite, whose rows are never marked seen: first forget this host's engines whose
        process has ended (killed: a clean stop removes its own row)."""
        with self._store.begin() as conn:
            if self._store.is_sqlite:
                _forget_ended(conn)
            self._insert(conn)
        self._announced = True

    def _insert(self, conn: Connection) -> None:
        conn.execute(
            insert(engine_presence).values(
                id=self._id,
                host=socket.gethostname(),
                pid=os.getpid(),
                started_at=func.now(),
                seen_at=func.now(),
                fresh_for=self._fresh_for,
            )
        )

    def _seen(self, conn: Connection) -> None:
        """Mark this engine seen (its row again if it went meanwhile), and delete the rows
        of engines not seen for ``STALE_AFTER``: PostgreSQL, at each lock check."""
        row = engine_presence.c.id == self._id
        if not conn.execute(update(engine_presence).where(row).values(seen_at=func.now())).rowcount:
            self._insert(conn)
        conn.execute(_PRUNE, {"me": self._id, "stale": STALE_AFTER})

    def _withdraw(self) -> None:
        """This engine's row gone at the stop; one left by a lost server goes stale."""
        if not self._announced:
            return
        try:
            with self._store.begin() as conn:
                conn.execute(delete(engine_presence).where(engine_presence.c.id == self._id))
        except DBAPIError:
            pass
        self._announced = False

    def release(self) -> None:
        """Give the lock back at the stop. A session the server ended meanwhile (a restart,
        an outage) holds no lock any more: nothing to give back, and the stop goes on."""
        with self._using:
            self._withdraw()
            self._release()
            if self._file is not None:
                file_lock.unlock(self._file)
                self._file = None

    def _release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock_shared(:k)"), {"k": self._key})
            self._conn.commit()
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        finally:
            self._conn.close()
            self._conn = None

    def _drop(self) -> None:
        assert self._conn is not None
        self._conn.invalidate()
        self._conn.close()
        self._conn = None


def _forget_ended(conn: Connection) -> None:
    """Delete the rows of this host's engines whose process is no longer there."""
    host = socket.gethostname()
    rows = conn.execute(
        select(engine_presence.c.id, engine_presence.c.pid).where(engine_presence.c.host == host)
    ).all()
    ended = [r.id for r in rows if r.pid != os.getpid() and not _alive(r.pid)]
    if ended:
        conn.execute(delete(engine_presence).where(engine_presence.c.id.in_(ended)))


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


@contextmanager
def engine_running(store: Store, fresh_for: float = 6.0) -> Iterator[EngineLock]:
    """The engine lock, held (and the engine announced) from an engine's start to its stop."""
    lock = EngineLock(store, fresh_for)
    lock.take()
    try:
        lock.announce()
        yield lock
    finally:
        lock.release()


@contextmanager
def held_postgres(conn: Connection, engines_stopped: bool = False) -> Iterator[None]:
    """Hold ``conn``'s store for a restore; StoreInUse when an engine runs against it: one
    holds the lock, or was seen lately (unless ``engines_stopped``: the operator knows
    they are not running). A schema that is not there yet has no engine."""
    key = conn.scalar(_KEY)
    if key is None:
        conn.rollback()
        yield
        return
    if not conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}):
        holders = conn.scalar(
            text(
                "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND ((classid::bigint << 32) | objid::bigint) = :k"
            ),
            {"k": key},
        )
        conn.rollback()
        raise StoreInUse(
            f"an engine is running against this store ({holders} session(s) hold the "
            f"engine lock): stop every engine of the store first"
        )
    conn.commit()
    try:
        seen = [] if engines_stopped else _seen_lately(conn)
        if seen:
            raise StoreInUse(
                f"an engine was seen running against this store moments ago ("
                f"{'; '.join(seen)}), and has not taken its engine lock again since its "
                f"session ended (a database restart?): stop it, or wait for it to take the "
                f"lock again; if you know it is not running, pass --engines-stopped"
            )
        yield
    finally:
        conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()


def _seen_lately(conn: Connection) -> list[str]:
    """The engines whose last sighting is fresh, each as ``host H pid P, seen N s ago``."""
    if conn.scalar(text("SELECT to_regclass('engine_presence')")) is None:
        conn.rollback()
        return []
    rows = conn.execute(_FRESH).all()
    conn.rollback()
    return [f"host {r.host} pid {r.pid}, seen {float(r.ago):.1f} s ago" for r in rows]


@contextmanager
def held_sqlite(database: Path) -> Iterator[None]:
    """Hold the SQLite store for a restore, from its first check to its end: the lock file
    exclusively (no engine starts meanwhile), and the database file closed by every other
    connection and left a single file (``take_sqlite``); StoreInUse otherwise."""
    held = file_lock.try_lock(database, exclusive=True)
    if held is None:
        engines = _sqlite_engines(database)
        raise StoreInUse(
            f"an engine is running against this store (it holds "
            f"{file_lock.lock_path(database)}"
            f"{'; recorded: ' + '; '.join(engines) if engines else ''}): stop every engine "
            f"of the store first"
        )
    try:
        take_sqlite(database)
        yield
    finally:
        file_lock.unlock(held)


def _sqlite_engines(database: Path) -> list[str]:
    """The engines the SQLite store records as started and not stopped (one killed stays
    recorded until the next restore), each as ``host H pid P, started T``."""
    try:
        reading = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            rows = reading.execute(
                "SELECT host, pid, started_at FROM engine_presence ORDER BY started_at"
            ).fetchall()
        finally:
            reading.close()
    except sqlite3.Error:  # no such table yet (an earlier schema), or no file
        return []
    return [f"host {host} pid {pid}, started {started} UTC" for host, pid, started in rows]


def take_sqlite(database: Path) -> None:
    """Make sure no connection has the SQLite file open, and leave it a single file (no
    ``-wal``); StoreInUse when one has it open. A file that is not there has no engine."""
    if not database.exists():
        return
    conn = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    except sqlite3.OperationalError as exc:
        raise StoreInUse(
            f"{database} is open in another process (an engine, or a run.py command): "
            f"stop every engine of the store first ({exc})"
        ) from exc
    finally:
        conn.close()
