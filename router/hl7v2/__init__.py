"""HL7 v2: a fast ER7 reader, MSH header, ACKs, batch files and (slow) hl7apy validation."""

from router.hl7v2.ack import (
    ERROR_CODES,
    AckCode,
    AckError,
    AckResult,
    ack_code,
    build_ack,
    build_reject,
    parse_ack,
    should_send,
    wants_commit_ack,
)
from router.hl7v2.batch import split_messages
from router.hl7v2.er7 import Er7Error, Er7Message, escape, unescape
from router.hl7v2.header import MshHeader, parse_header
from router.hl7v2.path import ANY, FieldPath, parse_path
from router.hl7v2.structure import StructureError, parse_structured, validate_strict

__all__ = [
    "ANY",
    "ERROR_CODES",
    "AckCode",
    "AckError",
    "AckResult",
    "Er7Error",
    "Er7Message",
    "FieldPath",
    "MshHeader",
    "StructureError",
    "ack_code",
    "build_ack",
    "build_reject",
    "escape",
    "parse_ack",
    "parse_header",
    "parse_path",
    "parse_structured",
    "should_send",
    "split_messages",
    "unescape",
    "validate_strict",
    "wants_commit_ack",
]
