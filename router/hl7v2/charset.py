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
