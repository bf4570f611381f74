"""What a FHIR source does with a request: check it, store it, answer.

The durability contract holds as for MLLP (DESIGN.md §3.1): a message is committed
before the 2xx that acknowledges it, and a store that cannot commit makes the answer
503, so the sender tries again. A request that fails a check is answered 400 (or 413,
415) with an OperationOutcome naming the problem and where it is, and stored as an
``error`` message with that reason, so it can be found and replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

from router.config.http import HttpSource
from router.fhir import FHIR_JSON
from router.fhir.outcome import Issue, Rejected, information, operation_outcome, reject
from router.fhir.validation import check_message, check_resource, parse_json
from router.store.inbound import Inbound, Receipt
from router.store.ingest import StoreUnavailable

log = logging.getLogger(__name__)
KEPT_OF_REJECTED = 64 * 1024  # of an oversized or unsupported body, stored with its reason
# Request headers kept with the message (never Authorization: it is a credential).
KEPT_HEADERS = (
    "content-type",
    "x-request-id",
    "x-correlation-id",
    "nhsd-target-identifier",
    "nhsd-end-user-organisation",
    "nhsd-requesting-software",
)
MIRRORED = ("x-request-id", "x-correlation-id")
Operation = Literal["process-message", "create"]
Ingest = Callable[[Inbound], Awaitable[Receipt]]
# A synchronous router (BaRS): answers with the receiver's answer, or raises Rejected.
Route = Callable[["FhirRequest", "Checked"], Awaitable["Answer"]]


@dataclass
class FhirRequest:
    channel: str
    source: HttpSource
    operation: Operation
    body: bytes
    headers: Mapping[str, str]
    remote: str
    path: str
    resource_type: str | None = None
    idempotency_window: float | None = None


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str = "application/fhir+json"


@dataclass(frozen=True)
class Checked:
    """A request that passed: its document, and the MessageHeader of a message."""

    document: dict[str, Any]
    header: dict[str, Any] | None


def fhir_answer(status: int, resource: dict[str, Any], headers: Mapping[str, str]) -> Answer:
    """A FHIR answer to a request with ``headers`` (whose BaRS ids it mirrors)."""
    return Answer(status, json.dumps(resource).encode(), mirrored_headers(headers))


def not_stored(headers: Mapping[str, str]) -> Answer:
    """503: the store could not commit, so nothing was acknowledged; the sender sends again."""
    issue = Issue("transient", "the message could not be stored; send it again later")
    return fhir_answer(503, operation_outcome([issue], 503), headers)


def rejected_answer(exc: Rejected, headers: Mapping[str, str]) -> Answer:
    return fhir_answer(exc.status, operation_outcome(exc.issues, exc.status), headers)


def mirrored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """BaRS: X-Request-Id and X-Correlation-Id come back as they were sent."""
    return {name: headers[name] for name in MIRRORED if headers.get(name)}


def source_metadata(request: FhirRequest, **extra: Any) -> dict[str, Any]:
    kept = {name: request.headers[name] for name in KEPT_HEADERS if request.headers.get(name)}
    return {
        "protocol": "http",
        "remote": request.remote,
        "path": request.path,
        "headers": kept,
        **extra,
    }


def check(request: FhirRequest) -> Checked:
    """Parse once and check; raises Rejected. Runs in a worker thread (it costs CPU)."""
    document = parse_json(request.body)
    source = request.source
    if request.operation == "process-message":
        header = check_message(
            document, events=source.events, event_system=source.event_system, version=source.fhir
        )
        return Checked(document, header)
    assert request.resource_type is not None
    check_resource(document, request.resource_type, source.fhir)
    return Checked(document, None)


def checked_inbound(
    request: FhirRequest, checked: Checked, *, source: dict[str, Any] | None = None, **fields: Any
) -> Inbound:
    """The message to store for a request that passed: as message type the event (or the
    resource type), as control id the Bundle.id (resource id), as sender the MessageHeader's
    source endpoint; ``source`` adds to the source metadata."""
    document, header = checked.document, checked.header
    if header is None:
        message_type, sender = document.get("resourceType"), None
    else:
        coding = header.get("eventCoding") or header.get("event") or {}
        message_type = coding.get("code")
        sender = (header.get("source") or {}).get("endpoint")
    return Inbound(
        request.channel,
        request.body,
        content_type=FHIR_JSON,
        message_type=_text(message_type),
        control_id=_text(document.get("id")),
        sender=_text(sender),
        source=source_metadata(request, **(source or {})),
        **fields,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class FhirIntake:
    """The FHIR endpoints: a message is stored and then routed by its channel, or (a channel
    with ``bars``) routed at once by ``route``."""

    def __init__(self, ingest: Ingest, executor: Executor, route: Route | None = None) -> None:
        self._ingest = ingest
        self._executor = executor
        self._route = route

    async def checked(self, request: FhirRequest) -> Checked:
        """``check`` off the event loop; a rejection is stored before it is raised."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, check, request)
        except Rejected as exc:
            await self.store_rejected(request, exc)
            raise

    async def store_rejected(
        self, request: FhirRequest, exc: Rejected, body: bytes | None = None
    ) -> None:
        """Keep a refused request with its reason; a store that is down does not change the
        answer (the sender is told what is wrong with its request either way)."""
        item = Inbound(
            request.channel,
            request.body if body is None else body,
            content_type=FHIR_JSON,
            message_type=request.resource_type if request.operation == "create" else None,
            source=source_metadata(request, status=exc.status),
            status="error",
            error=f"rejected ({exc.status}): {exc.reason}",
        )
        with contextlib.suppress(StoreUnavailable):
            await self._ingest(item)

    async def refuse(self, request: FhirRequest, status: int, code: str, text: str) -> Answer:
        """Answer ``status`` for a request refused before checks (size, media type)."""
        exc = reject(status, code, text)
        await self.store_rejected(request, exc, request.body[:KEPT_OF_REJECTED])
        return rejected_answer(exc, request.headers)

    async def accept(self, request: FhirRequest) -> Answer:
        """Check, store as received (the processor routes it), answer 202; or refuse."""
        try:
            checked = await self.checked(request)
        except Rejected as exc:
            return rejected_answer(exc, request.headers)
        if request.source.bars is not None and self._route is not None:
            try:
                return await self._route(request, checked)
            except Rejected as exc:
                await self.store_rejected(request, exc)
                return rejected_answer(exc, request.headers)
        item = checked_inbound(request, checked, idempotency_window=request.idempotency_window)
        try:
            receipt = await self._ingest(item)
        except StoreUnavailable as exc:
            log.error("channel %s: %s; answering 503", request.channel, exc)
            return not_stored(request.headers)
        if receipt.duplicate_of is not None:
            text = f"already received as urn:tie:message:{receipt.duplicate_of}; not routed again"
            return fhir_answer(200, information(text), request.headers)
        text = f"accepted as urn:tie:message:{receipt.uuid}"
        return fhir_answer(202, information(text), request.headers)
