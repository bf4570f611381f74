"""MLLP framing: ``0x0B`` + message + ``0x1C 0x0D``, read with a bounded buffer.

``read_frame`` reads from a stream (the MLLP sender and the CLI); ``FrameBuffer``
takes bytes as a protocol is handed them (the listener). Both follow the same
rules: junk outside frames is skipped, a restart keeps only the last frame, and
no more than about one frame's worth of bytes is ever held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

START = b"\x0b"
END = b"\x1c\x0d"
HEAD_SIZE = 4096  # bytes of an oversize frame kept: enough for its MSH line


class FrameTooLarge(Exception):
    """A frame grew past the configured maximum before its end marker arrived.

    ``head`` holds the frame's first bytes (up to ``HEAD_SIZE``; empty when no frame
    had begun), so that its MSH can address the reject and its row be found.
    """

    def __init__(self, message: str, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head


class TruncatedFrame(Exception):
    """The peer closed the connection in the middle of a frame."""


def frame(message: bytes) -> bytes:
    return START + message + END


async def read_frame(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """The next frame's content, or None at a clean end of stream.

    Bytes outside a frame are discarded (up to ``max_size`` of them). When a new
    start byte appears inside a frame, the earlier part was a truncated frame
    and only the last one is returned. One ``readuntil`` per frame: the stream's
    limit bounds what is buffered, junk before the start byte included.
    """
    skipped = 0
    while True:
        try:
            data = await reader.readuntil(END)
        except asyncio.LimitOverrunError as exc:
            raise FrameTooLarge(f"frame larger than {max_size} bytes") from exc
        except asyncio.IncompleteReadError as exc:
            start = exc.partial.find(START)
            if start < 0:
                return None
            raise TruncatedFrame(
                f"connection closed after {len(exc.partial) - start - 1} bytes of a frame"
            ) from exc
        start = data.rfind(START)
        if start >= 0:
            break
        skipped += len(data)
        if skipped > max_size:
            raise FrameTooLarge(f"{skipped} bytes of junk outside any MLLP frame")
    body = data[start + 1 : -len(END)]
    if len(body) > max_size:
        raise FrameTooLarge(f"frame of {len(body)} bytes is larger than {max_size}")
    return body


class FrameBuffer:
    """Frames out of bytes as they arrive, by ``read_frame``'s rules, for ``asyncio.Protocol``.

    A protocol is handed data rather than reading it, so it keeps its own buffer. A
    sender that waits for each ACK hands over one whole frame at a time: that piece is
    kept as it came (no copy). Pieces are joined in a ``bytearray`` only when a frame
    spans several, with the offset the search for the end marker reached, so a large
    frame is scanned once.

    Bytes skipped before a frame are told to ``on_discard`` (how many, and what they
    were) once per frame, when that frame is found: the sender of a badly framed
    message gets no answer, and its operator needs a trace.
    """

    def __init__(self, max_size: int, on_discard: Callable[[int, str], None] | None = None) -> None:
        self._max = max_size
        self._on_discard = on_discard
        self._buffer: bytes | bytearray = b""
        self._searched = 0  # no end marker starts before this offset
        self._skipped = 0  # junk discarded since the last frame

    def feed(self, data: bytes) -> None:
        if not self._buffer:
            self._buffer = data
        elif isinstance(self._buffer, bytes):
            self._buffer = bytearray(self._buffer) + data
        else:
            self._buffer += data

    def next(self) -> bytes | None:
        """The next whole frame's content, or None until more bytes arrive.

        Raises FrameTooLarge when the frame (or the junk before it) grows past the
        maximum: after that the buffer is in no defined state and the connection ends.
        """
        while True:
            buffer = self._buffer
            end = _find_end(buffer, self._searched)
            if end < 0:
                if len(buffer) > self._max + len(END):
                    head = _head(buffer, buffer.rfind(START))
                    raise FrameTooLarge(f"frame larger than {self._max} bytes", head)
                self._searched = max(len(buffer) - 1, 0)  # END may straddle two pieces
                return None
            start = buffer.rfind(START, 0, end)
            self._searched = 0
            if start >= 0:
                break
            self._drop(end + len(END))
            self._skipped += end + len(END)
            if self._skipped > self._max:
                raise FrameTooLarge(f"{self._skipped} bytes of junk outside any MLLP frame")
        if start or self._skipped:
            self._discarded(buffer, start)
        self._skipped = 0
        size = end - start - 1
        if size > self._max:
            head = _head(buffer, start)
            self._drop(end + len(END))
            raise FrameTooLarge(f"frame of {size} bytes is larger than {self._max}", head)
        body = bytes(memoryview(buffer)[start + 1 : end])  # one copy, not a slice and a copy
        self._drop(end + len(END))
        return body

    def _discarded(self, buffer: bytes | bytearray, start: int) -> None:
        """Report what was skipped before the frame at ``start``: junk dropped earlier, and
        whatever precedes the start byte (a frame cut short by it, when it holds one too)."""
        if self._on_discard is None or not (self._skipped or buffer[:start].strip()):
            return  # whitespace between frames (a line feed after each, say): nothing lost
        cut_short = buffer.rfind(START, 0, start) >= 0
        what = "a frame cut short by a new start byte" if cut_short else "no start byte"
        self._on_discard(self._skipped + start, what)

    def _drop(self, size: int) -> None:
        if isinstance(self._buffer, bytearray):
            del self._buffer[:size]
        else:
            self._buffer = self._buffer[size:]

    def unfinished(self) -> int | None:
        """How many bytes of a begun frame are held (None when no frame has begun).

        At the end of the stream, a number here is a frame the peer cut off.
        """
        start = self._buffer.rfind(START)
        return None if start < 0 else len(self._buffer) - start - 1

    def leftover(self) -> int:
        """Bytes skipped or held that are no whole frame: lost if the stream ends now.

        Whitespace alone is not counted: nothing is lost with it.
        """
        if not self._skipped and not self._buffer.strip():
            return 0
        return self._skipped + len(self._buffer)


def _find_end(buffer: bytes | bytearray, at: int) -> int:
    """Where the next end marker starts, or -1: its first byte found alone, by ``memchr``,
    which is some fifty times faster than searching for the two bytes together (a 10 MB
    frame is scanned in well under a millisecond, not ten, while other connections wait)."""
    first, second = END[0], END[1]
    while True:
        at = buffer.find(first, at)
        if at < 0 or at + 1 >= len(buffer):
            return -1
        if buffer[at + 1] == second:
            return at
        at += 1


def _head(buffer: bytes | bytearray, start: int) -> bytes:
    """The first bytes of the frame whose start byte is at ``start`` (-1: none begun)."""
    return bytes(buffer[start + 1 : start + 1 + HEAD_SIZE]) if start >= 0 else b""
