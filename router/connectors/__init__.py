"""Transports. Each destination connector offers ``send(delivery) -> SendResult``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from router.payload import Payload

Outcome = Literal["sent", "retry", "fail"]
# The MIME type of each of tie's own content types (a content type with a "/" is one).
CONTENT_TYPES = {
    "fhir+json": "application/fhir+json",
    "json": "application/json",
    "hl7v2": "x-application/hl7-v2+er7",
}


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed delivery, as a connector needs it."""

    id: int
    message_id: int
    message_uuid: str
    channel: str
    destination: str
    payload: bytes
    content_type: str
    ordering_key: str
    idempotency_key: str | None
    attempts: int
    blob: Payload | None = None
    headers: dict[str, str] | None = None
    address: str | None = None  # from the endpoint directory, for destinations that ask it

    @property
    def body(self) -> Payload:
        """The payload to send, inline or from the blob store: how every sender reads it."""
        return self.blob if self.blob is not None else Payload(self.payload)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt came to; ``response`` is kept with the attempt as received."""

    outcome: Outcome
    response: bytes | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds: the receiver's "not before" (HTTP Retry-After)


class Sender(Protocol):
    async def send(self, delivery: Delivery) -> SendResult: ...

    async def close(self) -> None: ...


def media_type(content_type: str) -> str:
    """The MIME type a receiver is told (HTTP Content-Type, MESH's) for a content type."""
    if "/" in content_type:
        return content_type
    return CONTENT_TYPES.get(content_type, "application/octet-stream")
