"""The SQLite store's engine lock: an OS lock (``flock``) on ``<database>.engine-lock``
beside the database file, held shared by every engine from start to stop and exclusively
by ``run.py db restore`` from its first check to its end.

A file of its own, not the database's: a restore replaces the database file (a lock on it
would stay with the replaced one), and SQLite's own locks come and go with transactions.
The OS lets go of it when the process ends, ``kill -9`` too; ``flock`` locks belong to the
open file, so an engine and a restore in one process exclude each other as well.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

SUFFIX = ".engine-lock"


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + SUFFIX)


def try_lock(database: Path, *, exclusive: bool) -> int | None:
    """The open lock file, locked; None when another holds it in a conflicting mode."""
    path = lock_path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    """Closing the file lets go of its lock."""
    os.close(fd)
