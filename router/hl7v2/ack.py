"""Original-mode (AA/AE/AR) and enhanced-mode commit (CA/CE/CR) acknowledgements."""

import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from router.hl7v2.er7 import Er7Error, Er7Message, escape, read_delimiters, split_segments
from router.hl7v2.header import DEFAULT_VERSION, MshHeader

AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]
Outcome = Literal["accept", "error", "reject"]

_ORIGINAL: dict[str, AckCode] = {"accept": "AA", "error": "AE", "reject": "AR"}
_ENHANCED: dict[str, AckCode] = {"accept": "CA", "error": "CE", "reject": "CR"}
_ENHANCED_MODES = frozenset({"AL", "NE", "ER", "SU"})
_VERSION_ID = re.compile(r"[\d.]*")

# HL7 table 0357 (message error condition codes) and their descriptions.
ERROR_CODES = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# Standard field lengths: MSA-3 is ST(80) in 2.3-2.6, ERR-1 (ELD) is 80 in 2.3/2.4 and
# ERR-8 is TX(250) in 2.5 and later.
_MSA_TEXT_MAX = 80
_ELD_MAX = 80
_USER_MESSAGE_MAX = 200


@dataclass(frozen=True, slots=True)
class AckError:
    """One error, sent as an ERR segment.

    ``code`` is from HL7 table 0357 (``ERROR_CODES``); ``location`` is
    ``segment^sequence^field`` such as ``MSH^1^10`` (always written with ``^``).
    """

    code: str
    text: str
    location: str = ""


@dataclass(frozen=True, slots=True)
class AckResult:
    """What a peer's ACK said: MSA-1, MSA-2, MSA-3 and the ERR text (empty when absent)."""

    code: str
    control_id: str
    text: str
    error: str


@lru_cache(maxsize=64)
def _version(version: str) -> tuple[int, ...]:
    """MSH-12's version number (its leading digits and dots: ``2.5.1^GBR^2.0`` is 2.5.1)."""
    numbers: list[int] = []
    for part in _VERSION_ID.match(version)[0].split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers) or _version(DEFAULT_VERSION)


def _text(text: str, field_sep: str, encoding: str, limit: int) -> str:
    """``text`` as one escaped line of at most ``limit`` characters, never cut inside an escape.

    ``splitlines`` also breaks on the MLLP framing bytes 0x0B and 0x1C, which must never
    reach the wire inside a message.
    """
    flat = " ".join(text.splitlines()).strip()
    out = escape(flat[:limit], field_sep, encoding)
    if len(out) <= limit:
        return out
    pieces: list[str] = []
    size = 0
    for char in flat:
        piece = escape(char, field_sep, encoding)
        size += len(piece)
        if size > limit:
            break
        pieces.append(piece)
    return "".join(pieces)


def _err_segment(error: AckError, field_sep: str, encoding: str, version: str) -> str:
    comp, sub = encoding[0], encoding[3]
    location = [escape(part, field_sep, encoding) for part in error.location.split("^")]
    code = escape(error.code, field_sep, encoding)
    name = ERROR_CODES.get(error.code, "")
    if _version(version) >= (2, 5):
        # ERR-2 location (ERL), ERR-3 HL7 error code (CWE), ERR-4 severity, ERR-8 user message
        fields = [
            "ERR",
            "",
            comp.join(location),
            f"{code}{comp}{name}{comp}HL70357",
            "E",
            "",
            "",
            "",
            _text(error.text, field_sep, encoding, _USER_MESSAGE_MAX),
        ]
        while not fields[-1]:
            fields.pop()
        return field_sep.join(fields)
    # 2.3/2.4: ERR-1 (ELD) = segment^sequence^field^code&text&HL70357, 80 characters in all
    prefix = comp.join([*location, "", "", ""][:3]) + f"{comp}{code}{sub}"
    suffix = f"{sub}HL70357"
    budget = max(_ELD_MAX - len(prefix) - len(suffix), 0)
    return f"ERR{field_sep}{prefix}{_text(error.text or name, field_sep, encoding, budget)}{suffix}"


def wants_commit_ack(header: MshHeader) -> bool:
    """Enhanced mode: the sender set MSH-15 or MSH-16; HL7 keeps original mode for messages
    where both are empty. An empty MSH-15 in enhanced mode names no condition (HL7 gives
    none): ``should_send`` then answers always, as for AL, since a sender left waiting
    resends for ever while an unwanted commit ACK is ignored."""
    return header.accept_ack_type in _ENHANCED_MODES or header.app_ack_type in _ENHANCED_MODES


def should_send(header: MshHeader, success: bool) -> bool:
    """Whether MSH-15 asks for an ACK for this outcome; original mode always gets one."""
    mode = header.accept_ack_type
    if mode == "NE":
        return False
    if mode == "ER":
        return not success
    if mode == "SU":
        return success
    return True


def ack_code(header: MshHeader, outcome: Outcome) -> AckCode:
    """AA/AE/AR in original mode, CA/CE/CR (commit ACK) in enhanced mode."""
    return (_ENHANCED if wants_commit_ack(header) else _ORIGINAL)[outcome]


def build_ack(
    header: MshHeader,
    code: AckCode,
    *,
    text: str = "",
    error: AckError | None = None,
    control_id: str | None = None,
    timestamp: str | None = None,
) -> bytes:
    """An ACK for the message ``header`` came from.

    Sender and receiver are swapped; MSH-11, MSH-12 (all its components: the ACK is in the
    original's version), MSH-18 and the delimiters are the original's; an empty MSH-11 is
    sent as ``P`` (``parse_header`` reads an empty MSH-12 as ``2.5``): the ACK's own MSH
    requires both. MSH-7 is this server's local time without offset (HL7 reads an
    offset-less time as the sender's local time). MSH-10 is 20 random hex characters
    (MSH-10 is ST(20) up to v2.4). Enhanced-mode ACKs say MSH-15/16 ``NE``: nobody
    acknowledges an ACK. ``text`` goes to MSA-3 (80 characters at most; the field is
    withdrawn in v2.7, where only ``error`` carries text), ``error`` to ERR.
    """
    field_sep, encoding = header.field_sep, header.encoding
    comp = encoding[0]
    version = header.version
    message_type = f"ACK{comp}{header.trigger_event}"
    if _version(version) >= (2, 3, 1):  # MSG.3 (message structure) is new in 2.3.1
        message_type += f"{comp}ACK"
    no_ack = "NE" if wants_commit_ack(header) else ""
    msh = [
        "MSH",
        encoding,
        header.receiving_app,
        header.receiving_facility,
        header.sending_app,
        header.sending_facility,
        timestamp or time.strftime("%Y%m%d%H%M%S"),
        "",
        message_type,
        control_id or os.urandom(10).hex(),
        header.processing_id or "P",
        version,
        "",
        "",
        no_ack,
        no_ack,
        "",
        header.charset,
    ]
    while not msh[-1]:
        msh.pop()
    msa = f"MSA{field_sep}{code}{field_sep}{header.control_id}"
    message = _text(text, field_sep, encoding, _MSA_TEXT_MAX) if text else ""
    if message and _version(version) < (2, 7):  # MSA-3 is withdrawn from v2.7 on
        msa += field_sep + message
    segments = [field_sep.join(msh), msa]
    if error is not None:
        segments.append(_err_segment(error, field_sep, encoding, version))
    return "\r".join(segments).encode(header.codec, errors="replace")


_UNKNOWN_SENDER = MshHeader(
    field_sep="|",
    encoding="^~\\&",
    sending_app="",
    sending_facility="",
    receiving_app="TIE",
    receiving_facility="",
    message_type="",
    message_code="",
    trigger_event="",
    control_id="",
    processing_id="P",
    version=DEFAULT_VERSION,
    accept_ack_type="",
    app_ack_type="",
    charset="",
    codec="utf-8",
)


def build_reject(
    reason: str, header: MshHeader | None = None, *, error_code: str = "102", location: str = ""
) -> bytes:
    """A reject (AR, or CR in enhanced mode) with ``reason`` in MSA-3 and ERR.

    Without ``header`` (its MSH could not be read) the ACK comes from sending app
    ``TIE``, version 2.5, with MSA-2 empty: there is no control id to echo, so that one
    ACK cannot satisfy MSA-2's "required". ``error_code`` is from table 0357; 102 (data
    type error) fits input that does not parse. ``location`` is where, as in ``AckError``.
    """
    origin = header or _UNKNOWN_SENDER
    return build_ack(
        origin,
        ack_code(origin, "reject"),
        text=reason,
        error=AckError(error_code, reason, location),
    )


def parse_ack(raw: bytes) -> AckResult:
    """Read a peer's ACK; the error text is ERR-8, else ERR-3.2, else ERR-1.4.2 (v2.3/2.4)."""
    return _plain_ack(raw) or _full_ack(raw)


def _plain_ack(raw: bytes) -> AckResult | None:
    """The usual ACK read straight from its one MSA segment, or None to read it in full.

    An MLLP destination reads an ACK for every message it sends, and the full reader
    costs several times more than the answer needs. This one takes an ACK only when
    reading it in full could not differ: ASCII (every codec tie knows reads it alike),
    no ERR segment, and MSA-1 to MSA-3 holding no delimiter or escape character.
    """
    if not raw.isascii():
        return None
    segments = split_segments(raw.decode("ascii"))
    field_sep, encoding = read_delimiters(segments[0])
    named = [s for s in segments[1:] if s[:3].upper() in ("MSA", "ERR")]
    if len(named) != 1 or not named[0].startswith("MSA" + field_sep):
        return None
    code, control_id, text = [*named[0].split(field_sep), "", "", ""][1:4]
    if not code or any(char in value for value in (code, control_id, text) for char in encoding):
        return None
    return AckResult(code=code, control_id=control_id, text=text, error="")


def _full_ack(raw: bytes) -> AckResult:
    """``parse_ack`` through the full ER7 reader: any codec, components, escapes, ERR."""
    message = Er7Message(raw)
    names = message.segment_names()
    if "MSA" not in names:
        raise Er7Error("no MSA segment")
    code = message.get("MSA-1")
    if code is None:
        raise Er7Error("empty MSA-1 (acknowledgment code)")
    error = ""
    if "ERR" in names:
        error = message.get("ERR-8") or message.get("ERR-3.2") or message.get("ERR-1.4.2") or ""
    return AckResult(
        code=code,
        control_id=message.get("MSA-2") or "",
        text=message.get("MSA-3") or "",
        error=error,
    )
