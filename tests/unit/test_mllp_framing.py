"""MLLP framing on a real asyncio stream: junk, restarts, truncation and size limits."""

from __future__ import annotations

import asyncio

import pytest

from router.connectors.mllp.framing import (
    HEAD_SIZE,
    START,
    FrameBuffer,
    FrameTooLarge,
    TruncatedFrame,
    frame,
    read_frame,
)


def _read_all(data: bytes, max_size: int = 1000) -> list[bytes | None]:
    """Every frame ``read_frame`` returns from ``data``, up to and including the end (None)."""

    async def main() -> list[bytes | None]:
        reader = asyncio.StreamReader(limit=max_size + 3)
        reader.feed_data(data)
        reader.feed_eof()
        out: list[bytes | None] = []
        while True:
            out.append(await read_frame(reader, max_size))
            if out[-1] is None:
                return out

    return asyncio.run(main())


def test_frames_back_to_back():
    assert _read_all(frame(b"MSH|one") + frame(b"MSH|two")) == [b"MSH|one", b"MSH|two", None]


def test_junk_outside_frames_is_skipped():
    data = b"junk\r\n" + frame(b"MSH|one") + b"\x00\xff" + frame(b"MSH|two") + b"trailing"
    assert _read_all(data) == [b"MSH|one", b"MSH|two", None]


def test_junk_ending_like_a_frame_is_skipped():
    assert _read_all(b"no start byte\x1c\r" + frame(b"MSH|one")) == [b"MSH|one", None]


def test_a_new_start_byte_inside_a_frame_keeps_only_the_last_frame():
    assert _read_all(b"\x0bMSH|cut off\x0bMSH|whole\x1c\r") == [b"MSH|whole", None]


def test_a_frame_cut_off_by_the_peer_is_truncated():
    with pytest.raises(TruncatedFrame, match="after 8 bytes"):
        _read_all(frame(b"MSH|one") + b"\x0bMSH|half")


def test_a_frame_over_the_limit_is_too_large():
    with pytest.raises(FrameTooLarge):
        _read_all(frame(b"M" * 2000), max_size=1000)


def test_endless_junk_is_too_large():
    with pytest.raises(FrameTooLarge):
        _read_all(b"j" * 5000, max_size=1000)


# --- FrameBuffer: the same rules for bytes handed over in pieces (the listener's protocol) ---


def _buffered(data: bytes, piece: int, max_size: int = 1000) -> tuple[list[bytes], int | None]:
    """Every frame a FrameBuffer yields from ``data`` fed ``piece`` bytes at a time, and the
    size of the unfinished frame left at the end (None: none begun)."""
    frames = FrameBuffer(max_size)
    out = []
    for offset in range(0, len(data), piece):
        frames.feed(data[offset : offset + piece])
        while (body := frames.next()) is not None:
            out.append(body)
    return out, frames.unfinished()


PIECES = [1, 2, 7, 1_000_000]  # a byte at a time, end markers split, all at once


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_frames_back_to_back(piece):
    data = frame(b"MSH|one") + frame(b"MSH|two")
    assert _buffered(data, piece) == ([b"MSH|one", b"MSH|two"], None)


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_looks_past_a_lone_first_end_byte(piece):
    """The end marker is found by its first byte: one not followed by CR is content."""
    data = frame(b"MSH|a\x1cb\x1c\x1c") + frame(b"MSH|two")
    assert _buffered(data, piece) == ([b"MSH|a\x1cb\x1c\x1c", b"MSH|two"], None)


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_skips_junk_outside_frames(piece):
    data = b"junk\r\n" + frame(b"MSH|one") + b"\x00\xff\x1c\r" + frame(b"MSH|two") + b"trailing"
    assert _buffered(data, piece) == ([b"MSH|one", b"MSH|two"], None)


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_restart_keeps_only_the_last_frame(piece):
    assert _buffered(b"\x0bMSH|cut off\x0bMSH|whole\x1c\r", piece) == ([b"MSH|whole"], None)


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_reports_a_frame_cut_off(piece):
    assert _buffered(frame(b"MSH|one") + b"\x0bMSH|half", piece) == ([b"MSH|one"], 8)


@pytest.mark.parametrize("piece", [7, 1_000_000])
def test_buffer_refuses_a_frame_over_the_limit(piece):
    with pytest.raises(FrameTooLarge, match="larger than 1000"):
        _buffered(frame(b"M" * 2000), piece)


@pytest.mark.parametrize("end", [b"", b"\x1c\r"], ids=["still coming", "whole"])
def test_an_oversize_frame_keeps_its_head(end):
    body = b"MSH|^~\\&|A\r" + b"M" * 10_000
    frames = FrameBuffer(1000)
    frames.feed(b"junk" + START + body + end)
    with pytest.raises(FrameTooLarge) as refused:
        frames.next()
    assert refused.value.head == body[:HEAD_SIZE]


def test_endless_junk_has_no_head():
    frames = FrameBuffer(1000)
    frames.feed(b"j" * 5000)
    with pytest.raises(FrameTooLarge) as refused:
        frames.next()
    assert refused.value.head == b""


def test_buffer_accepts_a_frame_of_exactly_the_limit_in_pieces():
    assert _buffered(frame(b"M" * 1000), 3) == ([b"M" * 1000], None)


@pytest.mark.parametrize("piece", [7, 1_000_000])
def test_buffer_refuses_endless_junk(piece):
    with pytest.raises(FrameTooLarge):
        _buffered(b"j" * 5000, piece)
    with pytest.raises(FrameTooLarge, match="junk"):
        _buffered(b"junk\x1c\r" * 300, piece)


def _told(data: bytes, piece: int) -> tuple[list[tuple[int, str]], int]:
    """What a FrameBuffer fed ``data`` in pieces says it discarded, and what it has left."""
    told: list[tuple[int, str]] = []
    frames = FrameBuffer(1000, lambda size, what: told.append((size, what)))
    for offset in range(0, len(data), piece):
        frames.feed(data[offset : offset + piece])
        while frames.next() is not None:
            pass
    return told, frames.leftover()


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_tells_what_it_discards_once_a_frame(piece):
    data = (
        b"\x0bLOST-T1"
        + frame(b"MSH|T2")  # a frame cut short by the next start byte
        + b"LOST-J1\x1c\r"
        + b"more\x1c\r"
        + frame(b"MSH|J2")  # no start byte: skipped
        + b"\r\n"
        + frame(b"MSH|three")  # whitespace between frames loses nothing
        + b"tail"
    )
    told, leftover = _told(data, piece)
    assert told == [(8, "a frame cut short by a new start byte"), (15, "no start byte")]
    assert leftover == 4


@pytest.mark.parametrize("piece", PIECES)
def test_buffer_has_nothing_left_after_whitespace(piece):
    assert _told(frame(b"MSH|one") + b"\r\n", piece) == ([], 0)
