"""Building an ``Inbound`` from an HL7 v2 message, the same way for every source."""

from __future__ import annotations

from typing import Any

from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import MshHeader, parse_header
from router.store.inbound import Inbound


def sender_key(header: MshHeader) -> str:
    """MSH-3/MSH-4 as ``app/facility``; a ``/`` (or ``\\``) in the app is escaped with ``\\``
    so that app ``LAB/A`` at ``B`` and app ``LAB`` at ``A/B`` stay two senders."""
    app = header.sending_app
    if "/" in app or "\\" in app:
        app = app.replace("\\", "\\\\").replace("/", "\\/")
    return f"{app}/{header.sending_facility}"


def hl7_inbound(channel: str, raw: bytes, header: MshHeader | None = None, **extra: Any) -> Inbound:
    """An Inbound with MSH-9, MSH-10 and the sender filled in (when MSH can be read)."""
    if header is None:
        try:
            header = parse_header(raw)
        except Er7Error:
            return Inbound(channel, raw, **extra)
    return Inbound(
        channel,
        raw,
        message_type=f"{header.message_code}^{header.trigger_event}".rstrip("^"),
        control_id=header.control_id,
        sender=sender_key(header),
        header=header,
        **extra,
    )
