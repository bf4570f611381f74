"""Map an MSH-18 character set (HL7 table 0211) to a Python codec."""

_CODECS = {
    "8859/1": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(2, 10)},
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
}


def codec_for(charset: str) -> str:
    """The codec for an MSH-18 value.

    Absent, ASCII and unknown character sets decode as UTF-8 (a superset of ASCII that
    most senders actually use); 16-bit sets such as ``UNICODE`` cannot carry ER7's
    single-byte separators, so they get UTF-8 too and decoding replaces what it cannot read.
    """
    return _CODECS.get(charset.strip().upper(), "utf-8")


def codec_for_bytes(charset: str, raw: bytes) -> str:
    """The codec to read ``raw`` with: MSH-18's, or latin-1 when MSH-18 names no 8-bit set
    and the bytes are not UTF-8.

    Many older systems send 8-bit text without MSH-18. Replacing what UTF-8 cannot read
    would make ``ORD-\xe91`` and ``ORD-\xe81`` the same control id (a different message
    taken for a duplicate) and an ACK whose MSA-2 matches neither; latin-1 keeps one
    character a byte, so distinct bytes stay distinct and are echoed back exactly.
    """
    codec = codec_for(charset)
    if codec != "utf-8" or raw.isascii() or charset.strip().upper() == "UNICODE UTF-8":
        return codec
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return codec
