"""A fast, lazy reader for ER7 (pipe-delimited) HL7 v2 messages.

Built for the MLLP hot path: plain string operations, segments split once, fields split
only when a path asks for them. hl7apy (structure-aware, slow) lives in ``structure``.
"""

from collections.abc import Iterator
from functools import lru_cache

from router.hl7v2.charset import codec_for, codec_for_bytes
from router.hl7v2.path import ANY, FieldPath, parse_path

__all__ = [
    "ANY",
    "Er7Error",
    "Er7Message",
    "FieldPath",
    "escape",
    "parse_path",
    "read_delimiters",
    "unescape",
]


class Er7Error(ValueError):
    """Raised with a human-readable reason when a message is not parseable ER7."""


@lru_cache(maxsize=64)
def _delimiter_problem(field_sep: str, encoding: str) -> str:
    if len(encoding) not in (4, 5):
        return f"MSH-2 {encoding!r} must have 4 or 5 characters"
    chars = field_sep + encoding
    if len(set(chars)) != len(chars):
        return f"a delimiter is repeated in {chars!r}"
    if any(c.isalnum() or c.isspace() for c in chars):
        return f"letters, digits or white space among the delimiters {chars!r}"
    return ""


def read_delimiters(msh: str) -> tuple[str, str]:
    """The field separator (MSH-1) and encoding characters (MSH-2) of an MSH segment.

    MSH-2 is component, repetition, escape and subcomponent characters, plus the
    truncation character from v2.7 on.
    """
    if len(msh) < 8:
        raise Er7Error("invalid encoding characters: the MSH segment is too short")
    field_sep = msh[3]
    end = msh.find(field_sep, 4)
    encoding = msh[4:] if end < 0 else msh[4:end]
    problem = _delimiter_problem(field_sep, encoding)
    if problem:
        raise Er7Error(f"invalid encoding characters: {problem}")
    return field_sep, encoding


@lru_cache(maxsize=64)
def _escape_table(field_sep: str, encoding: str) -> dict[int, str]:
    esc = encoding[2]
    codes = {field_sep: "F", encoding[0]: "S", encoding[1]: "R", esc: "E", encoding[3]: "T"}
    if len(encoding) == 5:
        codes[encoding[4]] = "P"
    table = {ord(char): f"{esc}{code}{esc}" for char, code in codes.items()}
    table[ord("\r")] = f"{esc}X0D{esc}"
    table[ord("\n")] = f"{esc}X0A{esc}"
    return table


def escape(text: str, field_sep: str = "|", encoding: str = "^~\\&") -> str:
    """Escape delimiters (and CR/LF, which would end the segment) so ``text`` is one value."""
    return text.translate(_escape_table(field_sep, encoding))


@lru_cache(maxsize=64)
def _unescape_map(field_sep: str, encoding: str) -> dict[str, str]:
    known = {
        "F": field_sep,
        "S": encoding[0],
        "R": encoding[1],
        "E": encoding[2],
        "T": encoding[3],
        ".br": "\n",
        "H": "",
        "N": "",
    }
    if len(encoding) == 5:
        known["P"] = encoding[4]
    return known


def _hex(digits: str, codec: str) -> str | None:
    """The bytes of a \\Xhh..\\ escape as text; None when they are not hex.

    Bytes that UTF-8 (the codec of a message without MSH-18) cannot read are read as
    latin-1, one character a byte, as ``codec_for_bytes`` reads undeclared 8-bit text: a
    lab writing µ as ``\\XB5\\`` means latin-1, and U+FFFD would lose the character.
    """
    if not digits:
        return None
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return None
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        return data.decode("latin-1" if codec == "utf-8" else codec, errors="replace")


def unescape(
    value: str, field_sep: str = "|", encoding: str = "^~\\&", codec: str = "utf-8"
) -> str:
    r"""Decode escapes in one leaf value.

    Delimiter escapes (\F\ \S\ \T\ \R\ \E\, \P\ in v2.7) and hex bytes (\Xhh..\, decoded
    with the message's codec) become text; \.br\ becomes a newline; the highlight
    switches \H\ and \N\ are dropped. Other formatting escapes (\.sp\, \.in\, \Cxxyy\...)
    are kept verbatim: they mean nothing outside a formatted-text viewer.
    """
    esc = encoding[2]
    if esc not in value:
        return value
    known = _unescape_map(field_sep, encoding)
    out: list[str] = []
    pos = 0
    start = value.find(esc)
    while start >= 0:
        end = value.find(esc, start + 1)
        if end < 0:
            break
        code = value[start + 1 : end]
        decoded = known.get(code)
        if decoded is None and code[:1] == "X":
            decoded = _hex(code[1:], codec)
        if decoded is None:
            start = value.find(esc, end + 1)
            continue
        out.append(value[pos:start])
        out.append(decoded)
        pos = end + 1
        start = value.find(esc, pos)
    out.append(value[pos:])
    return "".join(out)


def split_segments(text: str) -> list[str]:
    """Segments of one message, accepting CR, LF or CRLF terminators; blank lines dropped."""
    text = text.lstrip()
    if not text.startswith("MSH"):
        raise Er7Error("no MSH segment")
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return [s for s in text.split("\r") if s and not s.isspace()]


def _segment_name(segment: str, field_sep: str) -> str:
    end = segment.find(field_sep)
    return segment if end < 0 else segment[:end]


class Er7Message:
    """One ER7 message, read lazily.

    Values are returned by ``get``/``get_all`` as follows. A path that stops above the
    leaf level (``PID-5`` when PID-5 is ``DOE^JOHN``, or ``PID-3.1`` when it holds
    subcomponents) returns the raw text, escapes untouched, because decoding \\S\\ there
    would make an escaped ``^`` indistinguishable from a separator. A leaf value (no
    separator left in it) is returned with escapes decoded. Empty values count as absent.
    MSH-1 and MSH-2 are the delimiters themselves and are returned verbatim.

    ``field_sep``, ``encoding`` and ``codec`` (from MSH-18) are public attributes.
    """

    __slots__ = ("_fields", "_index", "_segments", "codec", "encoding", "field_sep")

    def __init__(self, raw: bytes | str) -> None:
        """Split ``raw`` into segments; bytes are decoded by MSH-18 (``codec_for_bytes``)."""
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        self._load(split_segments(text))
        msh = self._field_list(0)
        charset = msh[18].split(self.encoding[1], 1)[0] if len(msh) > 18 else ""
        self.codec = codec_for_bytes(charset, raw) if isinstance(raw, bytes) else codec_for(charset)
        if isinstance(raw, bytes) and self.codec != "utf-8":
            self._load(split_segments(raw.decode(self.codec, errors="replace")))

    def _load(self, segments: list[str]) -> None:
        self._segments = segments
        self.field_sep, self.encoding = read_delimiters(segments[0])
        self._fields: list[list[str] | None] = [None] * len(segments)
        self._index: dict[str, list[int]] | None = None

    @property
    def segments(self) -> list[str]:
        """Segment strings without terminators (a copy: the message itself is read-only)."""
        return list(self._segments)

    def segment_names(self) -> list[str]:
        """Segment ids in message order, repeats included."""
        return [_segment_name(s, self.field_sep) for s in self._segments]

    def to_er7(self) -> bytes:
        """The message normalised: segments joined by CR, no trailing CR, in its own codec."""
        return "\r".join(self._segments).encode(self.codec, errors="replace")

    def get(self, path: str) -> str | None:
        """The value at ``path`` (e.g. ``PID-3(2).1``); None when absent or empty.

        A segment or repetition index left out means the first (``PID-3.1`` is
        ``PID(1)-3(1).1``); ``*`` means the first non-empty one of all of them.
        """
        for value in self._values(parse_path(path), 1):
            return value
        return None

    def get_all(self, path: str) -> list[str]:
        """Every non-empty value at ``path``: an index left out means all (as ``*`` does)."""
        return list(self._values(parse_path(path), ANY))

    def _field_list(self, position: int) -> list[str]:
        fields = self._fields[position]
        if fields is None:
            fields = self._segments[position].split(self.field_sep)
            if position == 0:
                fields.insert(1, self.field_sep)  # so that fields[n] is MSH-n
            self._fields[position] = fields
        return fields

    def _positions(self, segment: str) -> list[int]:
        if segment == "MSH":
            return [0]
        if self._index is None:
            index: dict[str, list[int]] = {}
            for position, text in enumerate(self._segments):
                index.setdefault(_segment_name(text, self.field_sep).upper(), []).append(position)
            self._index = index
        return self._index.get(segment, [])

    def _values(self, p: FieldPath, default_index: int) -> Iterator[str]:
        positions = self._positions(p.segment)
        segment_index = default_index if p.segment_index is None else p.segment_index
        if segment_index != ANY:
            positions = positions[segment_index - 1 : segment_index]
        repetition = default_index if p.repetition is None else p.repetition
        for position in positions:
            fields = self._field_list(position)
            if p.field >= len(fields) or not fields[p.field]:
                continue
            value = fields[p.field]
            if position == 0 and p.field <= 2:
                if {repetition, p.component, p.subcomponent} <= {ANY, None, 1}:
                    yield value
                continue
            repetitions = value.split(self.encoding[1])
            if repetition != ANY:
                repetitions = repetitions[repetition - 1 : repetition]
            for text in repetitions:
                leaf = self._narrow(text, p)
                if leaf:
                    yield leaf

    def _narrow(self, value: str, p: FieldPath) -> str:
        comp, esc, sub = self.encoding[0], self.encoding[2], self.encoding[3]
        if p.component is not None:
            parts = value.split(comp)
            if p.component > len(parts):
                return ""
            value = parts[p.component - 1]
            if p.subcomponent is not None:
                parts = value.split(sub)
                if p.subcomponent > len(parts):
                    return ""
                value = parts[p.subcomponent - 1]
            elif sub in value:
                return value
        elif comp in value or sub in value:
            return value
        if esc in value:
            return unescape(value, self.field_sep, self.encoding, self.codec)
        return value
