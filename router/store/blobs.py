"""The blob store: large payloads as content-addressed files beside the database.

A payload above the threshold (1 MiB by default) is written once, streaming,
to ``<root>/<aa>/<bb>/<sha256>``: a temporary file is written and fsynced,
renamed into place, and the folder fsynced, so a committed row never names a
file that a crash could lose. The database row keeps the hash and the size
and an empty inline value. Equal payloads share one file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, BinaryIO

from router.payload import CHUNK, Payload

DEFAULT_THRESHOLD = 1024 * 1024
# How long a blob stays after it was last written or reused, even when no row names it.
REUSE_GRACE = 3600.0


class BlobStore:
    def __init__(self, root: Path, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.root = Path(root)
        self.threshold = threshold

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def payload(self, inline: bytes, sha256: str | None, size: int) -> Payload:
        """The Payload of a stored row: its inline bytes, or its blob by hash."""
        if sha256 is None:
            return Payload(inline)
        return Payload(path=self.path(sha256), sha256=sha256, size=size)

    def spool(self) -> Spool:
        """A writer that keeps a small payload in memory and spills a large one to a blob."""
        return Spool(self)

    def put(self, data: bytes | Payload) -> Payload:
        """``data`` as it should be stored: inline when small, else a blob (written if new)."""
        if isinstance(data, Payload):
            if data.is_blob or data.size <= self.threshold:
                return data
            data = data.inline
        if len(data) <= self.threshold:
            return Payload(data)
        return self.write([data])

    def write(self, chunks: Iterable[bytes]) -> Payload:
        """Stream ``chunks`` into a blob, whatever their total size."""
        with self.spool() as spool:
            spool.force_blob()
            for chunk in chunks:
                spool.write(chunk)
            return spool.finish()

    def _new_temporary(self) -> tuple[IO[bytes], Path]:
        folder = self.root / "tmp"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix="blob-", suffix=".part")
        return os.fdopen(fd, "wb"), Path(name)

    def _commit(self, temporary: Path, sha256: str, size: int) -> Payload:
        """Put the blob in place; an equal one already there is reused and touched, so that
        retention (``discard``) leaves it be while the row naming it commits."""
        final = self.path(sha256)
        try:
            reuse = final.stat().st_size == size
            if reuse:
                os.utime(final)
        except FileNotFoundError:
            reuse = False
        if reuse:
            temporary.unlink()
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temporary, final)
            fsync_dir(final.parent)
        return Payload(path=final, sha256=sha256, size=size)

    def discard(self, sha256: str, *, grace: float = REUSE_GRACE) -> bool:
        """Remove a blob no row names any more, unless it was written or reused within
        ``grace`` seconds (a row naming it may be about to commit); whether it went.

        The file is moved aside first: a writer reusing it at that moment either touched it
        before (it is young: moved back) or finds it gone and writes it again.
        """
        path = self.path(sha256)
        aside = path.with_name(f"{path.name}.discard")
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return False
        if time.time() - aside.stat().st_mtime < grace:
            os.replace(aside, path)
            return False
        aside.unlink()
        return True


class Spool:
    """Accumulates a payload being received; ``finish()`` gives it inline or as a blob.

    Memory is bounded by the threshold: past it, everything goes to a temporary
    file that becomes the blob on ``finish()``.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._file: IO[bytes] | None = None
        self._temporary: Path | None = None
        self._done = False

    def force_blob(self) -> None:
        if self._file is None:
            self._file, self._temporary = self._blobs._new_temporary()
            self._file.write(self._buffer)
            self._buffer.clear()

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)
        if self._file is None:
            self._buffer += chunk
            if len(self._buffer) > self._blobs.threshold:
                self.force_blob()
        else:
            self._file.write(chunk)

    def copy_from(self, stream: IO[bytes] | object, chunk: int = CHUNK) -> None:
        """Read ``stream`` (anything with ``read(n)``) to its end."""
        read = stream.read  # type: ignore[attr-defined]
        while block := read(chunk):
            self.write(block)

    def finish(self) -> Payload:
        self._done = True
        if self._file is None:
            return Payload(bytes(self._buffer))
        assert self._temporary is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._blobs._commit(self._temporary, self._hash.hexdigest(), self._size)

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._temporary is not None and (not self._done or kind is not None):
            self._temporary.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(target: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write`` into ``target`` so that a crash leaves it whole or absent: a partial file,
    fsynced, renamed into place, its folder fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f"{target.name}.part")
    with open(part, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(part, target)
    fsync_dir(target.parent)


def default_blob_root(store_url: str, base: Path) -> Path:
    """``blobs/`` beside a SQLite file; otherwise ``data/blobs`` under ``base``, engine.yaml's
    folder, against which every other relative path resolves (not the working folder, which
    moved the blobs, and hid every large payload, when the engine was started elsewhere)."""
    prefix = "sqlite:///"
    if store_url.startswith(prefix) and ":memory:" not in store_url:
        return Path(store_url[len(prefix) :].split("?", 1)[0]).resolve().parent / "blobs"
    return (base / "data" / "blobs").resolve()
