"""The view of one stored message that filters, routers and mappings work on."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, BinaryIO

from router.fhir import FHIR_JSON
from router.fhir.path import values as fhir_values
from router.hl7v2.er7 import Er7Error, Er7Message
from router.hl7v2.header import MshHeader, read_header
from router.payload import Payload, as_payload

MAX_KEY = 64  # correlations.key in the store
FLAG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # message_flags.flag in the store
HEADER_SPAN = 64 * 1024  # bytes read for MSH when the source's header is not at hand


class Message:
    """A received message: its payload plus lazy parsed forms.

    ``values`` serves declarative conditions (fast ER7 reader); ``hl7apy``
    gives the structure-aware tree for mappings that need groups. Mappings add
    correlation keys with ``correlate``. ``raw`` is the payload in memory;
    ``open()`` streams it, which is how large files (MESH extracts) are read.
    """

    def __init__(
        self,
        raw: bytes | Payload,
        channel: str,
        uuid: str = "",
        id: int = 0,
        received_at: datetime | None = None,
        content_type: str = "hl7v2",
        source: dict[str, Any] | None = None,
        correlations: list[tuple[str, str]] | None = None,
        header: MshHeader | None = None,
    ) -> None:
        self.body = as_payload(raw)
        # MSH as the source read it (to answer it): what routing needs of MSH-10 without
        # parsing the whole message again.
        self.header = header
        self.channel = channel
        self.uuid = uuid
        self.id = id
        self.received_at = received_at
        self.content_type = content_type
        self.source = source if source is not None else {}
        self.correlations = correlations if correlations is not None else []
        self.flags: list[str] = []

    @cached_property
    def raw(self) -> bytes:
        return self.body.read()

    def open(self) -> BinaryIO:
        """The payload as a binary stream, whatever its size; the caller closes it."""
        return self.body.open()

    def control_id(self) -> str | None:
        """MSH-10 as ``get("MSH-10")`` reads it; from MSH alone (the source's header, or the
        payload's first line) when it holds no separator or escape to read."""
        header = self.header if self.header is not None else self._first_line_header()
        if header is not None and not any(c in header.control_id for c in header.encoding):
            return header.control_id or None
        return self.get("MSH-10")

    def _first_line_header(self) -> MshHeader | None:
        """MSH read from the payload's first bytes, as the source read it (None: not within
        them, unreadable, or MSH-10 not ASCII). A message read back from the store has no
        header: reading its MSH-10 split all of it, some 100 ms holding the interpreter lock
        for a 9 MB ORU while every other connection's ACK waited, where MSH is all most
        channels read."""
        head = self.body.head(HEADER_SPAN)
        first = head.lstrip()
        if len(head) == HEADER_SPAN and b"\r" not in first and b"\n" not in first:
            return None
        try:
            header = read_header(head)
        except Er7Error:
            return None
        # Not ASCII: its text may depend on the codec the whole message is read with.
        return header if header.control_id.isascii() else None

    @cached_property
    def er7(self) -> Er7Message:
        return Er7Message(self.raw)

    @cached_property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    @cached_property
    def fhir(self) -> Any:
        """A FHIR message's JSON, parsed once (a source that parsed it already sets it)."""
        return json.loads(self.raw)

    def get(self, path: str) -> str | None:
        """The first value at a field path: HL7 v2 ``PID-3(2).1``, or a FHIR path."""
        if self.content_type == FHIR_JSON:
            found = fhir_values(self.fhir, path)
            return found[0] if found else None
        return self.er7.get(path)

    def values(self, path: str) -> list[str]:
        """Every value at a field path, across repeated fields and segments (or elements)."""
        if self.content_type == FHIR_JSON:
            return fhir_values(self.fhir, path)
        return self.er7.get_all(path)

    @cached_property
    def hl7apy(self) -> Any:
        """The hl7apy message tree, parsed with groups (costly: only when asked)."""
        from router.hl7v2.structure import parse_structured

        return parse_structured(self.raw)

    def correlate(self, key: str, value: str | None) -> None:
        """Tie this message to a conversation by ``key`` (e.g. ``placer_order``).

        A key longer than the store's 64 characters is this message's error here,
        rather than a failed write that would hold up every message processed with it.
        """
        if not key or len(key) > MAX_KEY:
            raise ValueError(f"correlation key {key!r} must have 1 to {MAX_KEY} characters")
        if value:
            self.correlations.append((key, value[:255]))

    def flag(self, code: str) -> None:
        """Mark this message with ``code`` (e.g. ``nhs-number-missing``), stored with it and
        searchable (``run.py messages --flag``). Unlike a correlation key, a flag never joins
        messages into one timeline."""
        if not FLAG.match(code):
            raise ValueError(f"flag {code!r}: use 1 to 32 lower-case letters, digits, - and _")
        if code not in self.flags:
            self.flags.append(code)


@dataclass(frozen=True)
class Output:
    """A payload a mapping returns when it is not of the message's own content type.

    ``headers`` go with the delivery to its destination: e.g. ``filename`` or
    ``subject`` for the MESH and SMTP templates. A blob ``Payload`` (a large file
    passed on unchanged) stays on disk.
    """

    body: bytes | str | Payload
    content_type: str = "hl7v2"
    headers: dict[str, str] | None = None

    @property
    def data(self) -> bytes:
        if isinstance(self.body, Payload):
            return self.body.read()
        return self.body.encode("utf-8") if isinstance(self.body, str) else self.body

    @property
    def payload(self) -> bytes | Payload:
        """What the delivery stores: bytes, or the blob itself (never loaded into memory)."""
        if isinstance(self.body, Payload) and self.body.is_blob:
            return self.body
        return self.data
