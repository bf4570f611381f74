"""Connections to the store: SQLite (WAL, synchronous FULL) or PostgreSQL (psycopg 3)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.abc import Buffer
from psycopg.types.string import StrBinaryDumper, StrDumperUnknown
from sqlalchemy import Connection, Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from router.store.blobs import BlobStore, default_blob_root

# Pages of WAL after which a commit also checkpoints. SQLite's default (1000 pages) makes
# about one commit in a hundred pay for a checkpoint; 10000 (40 MB of WAL at most between
# checkpoints) makes that one in a thousand, keeping checkpoints out of the 99th percentile.
WAL_AUTOCHECKPOINT = 10000
# libpq waits for ever for a server that accepted the connection but never answers (or
# whose packets are dropped): every store call, /health and the HTTP requests with it.
CONNECT_TIMEOUT = 10
# A connection whose network path drops silently (a firewall forgetting it, a failed-over
# VIP: no RST) would hang its next query until the kernel gives up retransmitting (~15
# minutes on Linux), and an idle one (the engine lock's) would take the kernel's keepalive
# defaults (2 h 11 min) to notice. Keepalives find a dead idle connection within
# 30 + 3 x 10 = 60 s; TCP_USER_TIMEOUT closes one whose sent data has gone unacknowledged
# for 60 s. The server's kernel answers both, so a long query on a live server trips
# neither. libpq's names; the URL's own value of each wins.
TCP_DEFAULTS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}

T = TypeVar("T")
# Runs work(conn) in a write transaction and returns its result once committed:
# ``Store.run`` (a transaction of its own) or ``GroupCommitWriter.run`` (ingest's next one).
Transact = Callable[[Callable[[Connection], T]], T]


class Store:
    """The engine's two ways into the database: write transactions and reads.

    On SQLite, write transactions start with ``BEGIN IMMEDIATE`` so that a
    transaction never has to upgrade a read lock (which fails at once under
    load instead of waiting); reads start a plain deferred transaction.
    Statement parameters are kept out of error messages: they hold patient data,
    and errors end up in logs.
    """

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        pool_size: int = 8,
        blobs: BlobStore | None = None,
    ) -> None:
        self.url = url
        # Large payloads live in files beside the database (DESIGN.md §3.5).
        self.blobs = blobs or BlobStore(default_blob_root(url, Path.cwd()))
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            _make_folder(url)
            self.writer = self._sqlite_engine(url, synchronous, busy_timeout, "BEGIN IMMEDIATE")
            self.reader = self._sqlite_engine(url, synchronous, busy_timeout, "BEGIN")
            # SQLite has one writer at a time. Threads of this process queue on a lock
            # instead of in SQLite's busy handler, which sleeps 1-100 ms between retries.
            self._write_lock: threading.RLock | None = threading.RLock()
        else:
            self._write_lock = None
            self.writer = create_engine(
                url,
                connect_args=_connect_args(url),
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                hide_parameters=True,
            )
            self.reader = self.writer
            event.listen(self.writer, "connect", _durable_commits)
            event.listen(self.writer, "connect", _nul_safe_text)

    @property
    def dialect(self) -> str:
        return self.writer.dialect.name

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction, committed on success and rolled back on error."""
        with self._locked(), self.writer.begin() as conn:
            yield conn

    def run(self, work: Callable[[Connection], T]) -> T:
        """``work(conn)`` in a write transaction of its own; its result once committed."""
        with self.begin() as conn:
            return work(conn)

    @contextmanager
    def begin_on(self, conn: Connection) -> Iterator[Connection]:
        """A write transaction on ``conn``, a writer connection the caller keeps open.

        For the busiest writer (ingest): a pool check-out and check-in, with its reset,
        cost more than inserting a few messages. On SQLite the transaction is begun and
        committed straight through the driver, SQLAlchemy's transaction bookkeeping being
        a fixed cost of every group commit; a statement run through SQLAlchemy inside it
        joins it (the begin hook sees the transaction open) and SQLAlchemy then commits.
        """
        if not self.is_sqlite:
            with conn.begin():
                yield conn
            return
        driver = conn.connection.driver_connection
        with self._locked():
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction():
                    conn.rollback()
                else:
                    driver.rollback()
                raise
            if conn.in_transaction():
                conn.commit()
            else:
                driver.commit()

    def _locked(self) -> AbstractContextManager[Any]:
        return self._write_lock if self._write_lock is not None else nullcontext()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection (its transaction is rolled back at the end)."""
        with self.reader.connect() as conn:
            yield conn

    def dispose(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()

    @staticmethod
    def _sqlite_engine(url: str, synchronous: str, busy_timeout: float, begin_sql: str) -> Engine:
        memory = ":memory:" in url or url.rstrip("/") == "sqlite:"
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout},
            poolclass=NullPool if memory else None,
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Straight to the driver: every transaction pays this, and SQLAlchemy's
            # execution of a fixed statement costs several times the statement itself.
            # A transaction ``begin_on`` opened is joined, not begun again.
            driver = conn.connection.driver_connection
            if not driver.in_transaction:
                driver.execute(begin_sql)

        return engine


def _make_folder(url: str) -> None:
    """SQLite creates the file but not its folder (``data/`` on a fresh clone)."""
    path = url.split(":///", 1)[-1].split("?", 1)[0]
    if path and ":memory:" not in path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _without_nul(text: str) -> str:
    """``text`` with U+FFFD in place of NUL, which PostgreSQL text cannot hold."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class _NulSafeStr(StrDumperUnknown):
    """Text sent as text, NUL replaced."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(_without_nul(obj))


class _NulSafeStrBinary(StrBinaryDumper):
    """Text sent in binary (the batch inserts' arrays), NUL replaced."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(_without_nul(obj))


def _nul_safe_text(dbapi_conn: Any, _record: Any) -> None:
    """Senders choose header fields, and peers their ACK texts: a NUL in one of them must
    not fail a whole group commit (raw messages and ACKs keep theirs, in bytea)."""
    dbapi_conn.adapters.register_dumper(str, _NulSafeStr)
    dbapi_conn.adapters.register_dumper(str, _NulSafeStrBinary)


def _durable_commits(dbapi_conn: Any, _record: Any) -> None:
    """A commit returns only once it is on disk, whatever the server's default says."""
    with dbapi_conn.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO on")
    dbapi_conn.commit()


# A value the store refuses for its column (too long, out of range): no retry stores it.
# Raised by the driver itself on the straight-through inserts (router.store.fast_insert).
VALUE_REFUSED: tuple[type[Exception], ...] = (exc.DataError, psycopg.DataError, sqlite3.DataError)


@contextmanager
def savepoint(conn: Connection, name: str) -> Iterator[None]:
    """A savepoint in ``conn``'s transaction, rolled back if the block raises (which then
    propagates). Straight to the driver: SQLAlchemy's ``begin_nested`` compiles its
    statements afresh each time, which costs more than the hot paths' own writes."""
    driver = conn.connection.driver_connection
    driver.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        driver.execute(f"ROLLBACK TO SAVEPOINT {name}")
        driver.execute(f"RELEASE SAVEPOINT {name}")
        raise
    driver.execute(f"RELEASE SAVEPOINT {name}")


def _connect_args(url: str) -> dict[str, Any]:
    """libpq's ``connect_timeout`` (``CONNECT_TIMEOUT`` seconds) and ``TCP_DEFAULTS``, each
    unless the URL sets its own (SQLAlchemy's connect_args would override the URL's)."""
    defaults = {"connect_timeout": CONNECT_TIMEOUT, **TCP_DEFAULTS}
    query = make_url(url).query
    return {name: value for name, value in defaults.items() if name not in query}


class StoreUnavailable(Exception):
    """The store could not commit; the sender must get a negative answer and retry."""


def is_connection_problem(error: BaseException) -> bool:
    """Whether ``error`` is the store refusing, dropping or failing a connection or a commit
    (PostgreSQL down, a full disk), which retrying later cures, rather than a bug."""
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return True
    return isinstance(error, exc.DBAPIError) and error.connection_invalidated


def driver_reason(error: BaseException) -> str:
    """``store unavailable: <driver error>: <its first line>``, without SQLAlchemy's SQL and
    link, for a one-line log entry."""
    orig = error.orig if isinstance(error, exc.DBAPIError) else None
    cause = orig if orig is not None else error
    first = (str(cause).strip().splitlines() or [""])[0]
    return f"store unavailable: {type(cause).__name__}: {first}"
