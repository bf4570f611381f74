"""MLLP framing: ``0x0B`` + message + ``0x1C 0x0D``, read with a bounded buffer."""

from __future__ import annotations

import asyncio

START = b"\x0b"
END = b"\x1c\x0d"


class FrameTooLarge(Exception):
    """A frame grew past the configured maximum before its end marker arrived."""


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
