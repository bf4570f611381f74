"""The MSH fields the MLLP listener needs to route and acknowledge, from the first line only."""

from dataclasses import dataclass

from router.hl7v2.charset import codec_for_bytes
from router.hl7v2.er7 import Er7Error, read_delimiters

DEFAULT_VERSION = "2.5"


@dataclass(slots=True)
class MshHeader:
    """MSH values as raw field text (escapes untouched: an ACK copies them back verbatim).

    Treat it as immutable (``dataclasses.replace`` for a variant). It is not declared
    frozen because a frozen dataclass sets its 15 fields through ``object.__setattr__``,
    which made building one cost four times as much on the MLLP listener's ACK path.
    ``codec`` is the one MSH was read with (``codec_for_bytes``); the ACK is written in it.
    ``version`` is MSH-12 with all its components, as an ACK echoes it (``2.5`` when empty).
    """

    field_sep: str
    encoding: str
    sending_app: str
    sending_facility: str
    receiving_app: str
    receiving_facility: str
    message_type: str
    message_code: str
    trigger_event: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    app_ack_type: str
    charset: str
    codec: str


def _first_line(raw: bytes) -> bytes:
    cr = raw.find(b"\r")
    end = len(raw) if cr < 0 else cr
    lf = raw.find(b"\n", 0, end)  # bounded: never scan a large CR-separated body
    return raw[: end if lf < 0 else lf]


def parse_header(raw: bytes) -> MshHeader:
    """Read MSH without touching the rest of the message (which may be megabytes of PDF).

    Raises Er7Error when MSH is missing, its delimiters are invalid, MSH-9 has no message
    code or MSH-10 is empty. An empty MSH-12 is tolerated and read as ``2.5``.
    """
    header = read_header(raw)
    if not header.message_code:
        raise Er7Error("missing MSH-9 (message type)")
    if not header.control_id:
        raise Er7Error("empty MSH-10 (message control id)")
    return header


def read_header(raw: bytes) -> MshHeader:
    """MSH as it stands, even with an empty MSH-9 or MSH-10: enough to address a reject.

    Raises Er7Error only when there is no MSH or its delimiters are invalid.
    """
    line = _first_line(raw.lstrip())
    if not line.startswith(b"MSH"):
        raise Er7Error("no MSH segment")
    text = line.decode("utf-8", errors="replace")
    field_sep, encoding = read_delimiters(text)
    fields = text.split(field_sep)  # fields[n - 1] is MSH-n for n >= 2
    fields += [""] * (18 - len(fields))
    charset = fields[17].split(encoding[1], 1)[0]
    codec = codec_for_bytes(charset, line)
    if codec != "utf-8":
        text = line.decode(codec, errors="replace")
        field_sep, encoding = read_delimiters(text)
        fields = text.split(field_sep)
        fields += [""] * (18 - len(fields))
    comp, rep = encoding[0], encoding[1]
    message_type = fields[8]
    type_parts = message_type.split(rep, 1)[0].split(comp)
    control_id = fields[9]
    version = fields[11]
    return MshHeader(
        field_sep=field_sep,
        encoding=encoding,
        sending_app=fields[2],
        sending_facility=fields[3],
        receiving_app=fields[4],
        receiving_facility=fields[5],
        message_type=message_type,
        message_code=type_parts[0],
        trigger_event=type_parts[1] if len(type_parts) > 1 else "",
        control_id=control_id,
        processing_id=fields[10],
        version=version or DEFAULT_VERSION,
        accept_ack_type=fields[14],
        app_ack_type=fields[15],
        charset=charset,
        codec=codec,
    )
