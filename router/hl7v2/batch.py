"""Split a file of ER7 messages (optionally in an FHS/BHS batch envelope) into messages."""

from router.hl7v2.er7 import Er7Error

_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


def split_messages(data: bytes) -> list[bytes]:
    """Messages in ``data``, each normalised to CR-separated segments without a trailing CR.

    Every message starts at a line beginning ``MSH``; batch envelope lines and blank lines
    are dropped; LF, CRLF and CR line ends are all accepted. A segment before the first
    MSH raises Er7Error rather than being silently lost.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark from a text editor
        data = data[3:]
    messages: list[list[bytes]] = []
    for line in data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
        line = line.lstrip()
        if not line or line.startswith(_ENVELOPE):
            continue
        if line.startswith(b"MSH"):
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            raise Er7Error(f"segment before the first MSH: {line[:20]!r}")
    return [b"\r".join(segments) for segments in messages]
