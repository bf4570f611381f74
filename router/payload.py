"""The body of a message or a delivery: bytes in the database, or a file in the blob store.

Every reader of a payload (processing, detail views, senders) goes through
``Payload``, so that a 200-byte HL7 message and a 1 GB GP extract are read the
same way: ``open()`` streams either, ``read()`` loads it when it is known to be
small, ``chunks()`` walks it with bounded memory (DESIGN.md §3.5).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


class Payload:
    """Inline bytes, or a content-addressed blob file (``sha256``, ``size``) read from disk."""

    __slots__ = ("_data", "_path", "sha256", "size")

    def __init__(
        self,
        data: bytes = b"",
        *,
        path: Path | None = None,
        sha256: str | None = None,
        size: int | None = None,
    ) -> None:
        self._data = data
        self._path = path
        self.sha256 = sha256
        self.size = len(data) if path is None else int(size or 0)

    @property
    def is_blob(self) -> bool:
        return self._path is not None

    @property
    def path(self) -> Path | None:
        """The blob file, for senders that hand a real file to a library (MESH chunking)."""
        return self._path

    @property
    def inline(self) -> bytes:
        """The bytes kept in the database row: empty for a blob."""
        return self._data

    def open(self) -> BinaryIO:
        """A binary stream of the whole payload; the caller closes it."""
        if self._path is None:
            return io.BytesIO(self._data)
        return self._path.open("rb")

    def read(self) -> bytes:
        """All of it in memory: only for payloads known to be small (or explicitly wanted)."""
        if self._path is None:
            return self._data
        return self._path.read_bytes()

    def head(self, limit: int) -> bytes:
        """At most ``limit`` bytes from the start, e.g. for a preview."""
        with self.open() as stream:
            return stream.read(limit)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        with self.open() as stream:
            while block := stream.read(size):
                yield block

    def __repr__(self) -> str:
        where = f"blob {self.sha256}" if self.is_blob else "inline"
        return f"<Payload {where}, {self.size} bytes>"


def as_payload(value: bytes | Payload) -> Payload:
    return value if isinstance(value, Payload) else Payload(value)
