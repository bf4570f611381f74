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
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, Literal

from router.config.http import HttpSource
from router.fhir import FHIR_JSON
from router.fhir.bars import source_endpoint
from router.fhir.outcome import Issue, Rejected, information, operation_outcome, reject
from router.fhir.request_id import REQUEST_ID, callers_id, request_keys
from router.fhir.validation import message_header, parse_json, require_resource
from router.fhir.validators import ValidationWorkers, ValidatorLost
from router.outage_log import outage_reason
from router.repeat_log import RepeatLog
from router.store.inbound import VALIDATING, Inbound, Receipt, time_ordered_uuid
from router.store.ingest import StoreUnavailable

log = logging.getLogger(__name__)
KEPT_OF_REJECTED = 64 * 1024  # of an oversized or unsupported body, stored with its reason
PARSED_IN_LOOP = 64 * 1024  # bytes: a larger body is parsed in a thread (~0.5 ms and more)
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
# A synchronous router (BaRS), given the request, its shape and its models' validation
# under way: answers with the receiver's answer, or raises Rejected before storing.
Route = Callable[["FhirRequest", "Checked", "asyncio.Future[None]"], Awaitable["Answer"]]
# Settles a message stored ``validating``: passed (None) or refused with the given reason.
Release = Callable[[Inbound, str | None], Future[bool]]


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
    user: str | None = None  # the sender's API user, when the source takes tokens
    # The resource id (Bundle.id) once the body is parsed: a refusal after that is stored
    # with it as control id, so a search by the id the sender knows finds it.
    control_id: str | None = None
    uuid: str = field(default_factory=time_ordered_uuid)  # of the message that stores it

    @property
    def request_id(self) -> str:
        """The ``X-Request-Id`` of every answer: the caller's, else the stored message's
        UUID."""
        return callers_id(self.headers.get(REQUEST_ID)) or self.uuid

    @property
    def keys(self) -> tuple[tuple[str, str], ...]:
        """Correlation keys of the stored request: the caller's ``X-Request-Id``."""
        return request_keys(self.headers.get(REQUEST_ID))


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


def answer_unstored(lines: RepeatLog, request: FhirRequest, exc: BaseException) -> Answer:
    """``not_stored``, logged once per channel every few minutes while the store is down:
    a line a request buried the log (a busy sender retrying makes thousands a minute); the
    first line after the window says how many more there were."""
    lines.error(
        ("store unavailable", request.channel),
        "channel %s: answering 503 to %s: %s (the next ones while it lasts are counted)",
        request.channel,
        request.remote,
        outage_reason(exc),
    )
    return not_stored(request.headers)


def rejected_answer(exc: Rejected, headers: Mapping[str, str]) -> Answer:
    answer = fhir_answer(exc.status, operation_outcome(exc.issues, exc.status), headers)
    answer.headers.update(exc.headers)
    return answer


def mirrored_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """BaRS: X-Request-Id and X-Correlation-Id come back as they were sent."""
    return {name: headers[name] for name in MIRRORED if headers.get(name)}


def source_metadata(request: FhirRequest, **extra: Any) -> dict[str, Any]:
    kept = {name: request.headers[name] for name in KEPT_HEADERS if request.headers.get(name)}
    sender = {"user": request.user} if request.user else {}
    return {
        "protocol": "http",
        "remote": request.remote,
        "path": request.path,
        "headers": kept,
        **sender,
        **extra,
    }


def check(request: FhirRequest) -> Checked:
    """Parse once and check the shape tie routes on (the models are validated apart, in a
    worker process); raises Rejected. Runs in a worker thread (parsing costs CPU)."""
    document = parse_json(request.body)
    if isinstance(document, dict):
        request.control_id = _text(document.get("id"))
    source = request.source
    if request.operation == "process-message":
        header = message_header(
            document, events=source.events, event_system=source.event_system, version=source.fhir
        )
        return Checked(document, header)
    assert request.resource_type is not None
    require_resource(document, request.resource_type)
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
        control_field = f"{message_type}.id"
    else:
        control_field = "Bundle.id"
        coding = header.get("eventCoding") or header.get("event") or {}
        message_type = coding.get("code")
        sender = source_endpoint(header)
    return Inbound(
        request.channel,
        request.body,
        content_type=FHIR_JSON,
        message_type=_text(message_type),
        control_id=_text(document.get("id")),
        sender=_text(sender),
        source=source_metadata(request, **(source or {})),
        uuid=request.uuid,
        control_field=control_field,
        **fields,
    )


def _text(value: Any) -> str | None:
    """A non-empty string the store can keep: JSON allows a lone surrogate (``\\ud800``),
    UTF-8 and so the database do not, and a refusal that could not be stored is lost."""
    if not isinstance(value, str) or not value:
        return None
    if value.isascii():
        return value
    try:
        value.encode()
    except UnicodeEncodeError:
        return None
    return value


class FhirIntake:
    """The FHIR endpoints: a message is stored and then routed by its channel, or (a channel
    with ``bars``) routed at once by ``route``.

    The models are validated in worker processes (router.fhir.validators) while the engine
    parses the request and, for a stored message, commits it as ``validating``: the sender
    waits for the longer of the two, not their sum. The answer waits for both; then the
    message is released (received, or settled at once) or kept as an error with the reason.
    """

    def __init__(
        self,
        ingest: Ingest,
        executor: Executor,
        validators: ValidationWorkers,
        release: Release,
        route: Route | None = None,
    ) -> None:
        self._ingest = ingest
        self._executor = executor
        self._validators = validators
        self._release = release
        self._route = route
        self._unstored = RepeatLog(log)

    async def verify(self, request: FhirRequest) -> Checked:
        """The shape (``check``) and the models (in a worker), at once."""
        models, checked = await self._begun(request)
        await models
        return checked

    async def store_rejected(
        self,
        request: FhirRequest,
        exc: Rejected,
        body: bytes | None = None,
        checked: Checked | None = None,
    ) -> None:
        """Keep a refused request with its reason; a store that is down does not change the
        answer (the sender is told what is wrong with its request either way). A request
        whose shape was ``checked`` keeps its event and sender too, as an accepted one does,
        so a search by type or sender finds it."""
        refused = {"status": "error", "error": rejected_reason(exc), "keys": request.keys}
        if checked is not None:
            item = checked_inbound(request, checked, source={"status": exc.status}, **refused)
        else:
            item = Inbound(
                request.channel,
                request.body if body is None else body,
                content_type=FHIR_JSON,
                message_type=request.resource_type if request.operation == "create" else None,
                control_id=request.control_id,
                source=source_metadata(request, status=exc.status),
                uuid=request.uuid,
                **refused,
            )
        with contextlib.suppress(StoreUnavailable):
            await self._ingest(item)

    async def refuse(self, request: FhirRequest, status: int, code: str, text: str) -> Answer:
        """Answer ``status`` for a request refused before checks (size, media type, what
        the channel takes), and keep it (its first 64 KiB) with the reason."""
        return await self.turn_away(request, reject(status, code, text))

    async def turn_away(self, request: FhirRequest, exc: Rejected) -> Answer:
        """``refuse`` with the refusal made: also a sender's (router/fhir/senders.py)."""
        await self.store_rejected(request, exc, request.body[:KEPT_OF_REJECTED])
        return identified(request, rejected_answer(exc, request.headers))

    async def accept(self, request: FhirRequest) -> Answer:
        """Check and store (the processor routes it), answer 202; or refuse."""
        return identified(request, await self._accept(request))

    async def _accept(self, request: FhirRequest) -> Answer:
        if request.source.bars is not None and self._route is not None:
            try:
                models, checked = await self._begun(request)
            except Rejected as exc:
                await self.store_rejected(request, exc)
                return rejected_answer(exc, request.headers)
            try:
                return await self._route(request, checked, models)
            except Rejected as exc:
                await self.store_rejected(request, exc, checked=checked)
                return rejected_answer(exc, request.headers)
        try:
            models, checked = await self._begun(request)
        except Rejected as exc:
            await self.store_rejected(request, exc)
            return rejected_answer(exc, request.headers)
        item = checked_inbound(
            request,
            checked,
            idempotency_window=request.idempotency_window,
            status=VALIDATING,
            keys=request.keys,
        )
        stored = asyncio.ensure_future(self._ingest(item))
        try:
            await models
        except Rejected as exc:
            await self._keep_rejected(request, item, stored, exc)
            return rejected_answer(exc, request.headers)
        try:
            receipt = await stored
        except StoreUnavailable as exc:
            return answer_unstored(self._unstored, request, exc)
        if receipt.duplicate_of is not None:
            text = f"already received as urn:tie:message:{receipt.duplicate_of}; not routed again"
            return fhir_answer(200, information(text), request.headers)
        # After the answer is written: deciding a route may read the Bundle again.
        asyncio.get_running_loop().call_soon(self._released, item)
        text = f"accepted as urn:tie:message:{receipt.uuid}"
        return fhir_answer(202, information(text), request.headers)

    async def _begun(self, request: FhirRequest) -> tuple[asyncio.Future[None], Checked]:
        """The models' validation under way in a worker, and the shape checked meanwhile;
        a shape that fails is raised once the worker is done with the body."""
        models = await self._validate(request)
        try:
            return models, await self._shape(request)
        except Rejected:
            await _finished(models)
            raise

    def _released(self, item: Inbound) -> None:
        self._release(item, None).add_done_callback(_log_failed_release)

    async def _shape(self, request: FhirRequest) -> Checked:
        """``check``: a body of up to ``PARSED_IN_LOOP`` bytes on the event loop (parsing
        22 KB costs less than handing it to a thread and back), a larger one in a thread."""
        if len(request.body) <= PARSED_IN_LOOP:
            return check(request)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, check, request)

    async def _validate(self, request: FhirRequest) -> asyncio.Future[None]:
        """The models' validation, under way in a worker when this returns (a lost worker
        is a 503: send again)."""
        models = asyncio.ensure_future(self._models(request))
        # One turn of the loop: the task sends the body to an idle worker before the
        # engine parses it too (which would otherwise come first, ~0.2 ms later).
        await asyncio.sleep(0)
        return models

    async def _models(self, request: FhirRequest) -> None:
        try:
            await self._validators.start()  # at once when started (by the gateway, usually)
            await self._validators.validate(request.body, request.source.fhir)
        except (ValidatorLost, OSError, TimeoutError) as exc:
            log.error("channel %s: %s", request.channel, exc)
            text = "the request could not be validated; send it again"
            raise reject(503, "transient", text) from exc

    async def _keep_rejected(
        self, request: FhirRequest, item: Inbound, stored: asyncio.Future[Receipt], exc: Rejected
    ) -> None:
        """The message stored as validating (or as a repeat) becomes an error with the
        reason the sender is given; if it could not be stored, it is stored as refused (a
        store that is down does not change the answer)."""
        try:
            await stored
        except StoreUnavailable:
            await self.store_rejected(request, exc)
            return
        with contextlib.suppress(StoreUnavailable):
            await asyncio.wrap_future(self._release(item, rejected_reason(exc)))


def identified(request: FhirRequest, answer: Answer) -> Answer:
    """``answer`` with the ``X-Request-Id`` that finds the stored request (the caller's own,
    else the message's UUID), as every answer of a FHIR source carries."""
    answer.headers[REQUEST_ID] = request.request_id
    return answer


def rejected_reason(exc: Rejected) -> str:
    """The error a refused request is stored with."""
    return f"rejected ({exc.status}): {exc.reason}"


async def _finished(models: asyncio.Future[None]) -> None:
    """Wait for a validation whose answer no longer matters (its worker must come back)."""
    with contextlib.suppress(Rejected):
        await models


def _log_failed_release(done: Future[bool]) -> None:
    exc = done.exception()
    if exc is not None:
        log.error(
            "a validated message could not be released (%s); it stays validating until "
            "the recovery finds it",
            exc,
        )
