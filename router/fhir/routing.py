"""BaRS routing: a ``$process-message`` forwarded synchronously to its target's endpoint.

The target is ``NHSD-Target-Identifier`` or ``MessageHeader.destination[0].endpoint``;
a ``*-response`` goes back to the ``source.endpoint`` of the message it answers. The
directory gives the target's FHIR base URL for the message's event. The message, its
delivery and its correlation keys are committed (while a worker validates the models)
before anything is forwarded; the receiver's answer is passed back as it came, and the
outcome recorded after it (docs/fhir.md#bars-routing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from sqlalchemy import Connection

from router.config.http import BarsRouting
from router.connectors.http import join_url, wire_parts
from router.directory import Directory, Key, parse_key
from router.fhir.bars import (
    conversation_keys,
    encode_target,
    event_of,
    is_response,
    response_to,
    service_requests,
    source_endpoint,
    target_for,
)
from router.fhir.exchange import (
    FORWARD,
    Opened,
    Outcome,
    Registration,
    accept_message,
    close_exchange,
    find_original,
    open_exchange,
    refuse_exchange,
)
from router.fhir.forwarding import Forwarder, HopFailed
from router.fhir.hop_log import HopLog
from router.fhir.intake import (
    Answer,
    Checked,
    FhirRequest,
    answer_unstored,
    checked_inbound,
    fhir_answer,
    mirrored_headers,
    not_stored,
    rejected_answer,
    rejected_reason,
)
from router.fhir.outcome import Issue, Rejected, operation_outcome, reject
from router.fhir.recorder import Recorder
from router.outage_log import is_store_outage
from router.repeat_log import RepeatLog
from router.store.database import Store
from router.store.inbound import VALIDATING, Inbound, utcnow
from router.store.ingest import GroupCommitWriter
from router.store.placement import placed_off_loop

log = logging.getLogger(__name__)
PASSED_ON = (
    "x-request-id",
    "x-correlation-id",
    "nhsd-end-user-organisation",
    "nhsd-requesting-software",
)
LEASE_MARGIN = 60.0  # seconds beyond the exchange's own timeouts
# Where a response's target comes from: the message it answers (its source.endpoint).
ANSWERED = "Bundle.entry[0].resource.response.identifier"


class BarsRouter:
    def __init__(
        self,
        store: Store,
        writer: GroupCommitWriter,
        recorder: Recorder,
        directory: Directory,
        forwarder: Forwarder,
        owner: str,
    ) -> None:
        self._store = store
        self._writer = writer
        self._recorder = recorder
        self._directory = directory
        self._owner = owner
        self._forwarder = forwarder
        self._unstored = RepeatLog(log)
        self._hops = HopLog(log)

    async def route(
        self, request: FhirRequest, checked: Checked, models: asyncio.Future[None]
    ) -> Answer:
        """Store, forward, answer with the receiver's answer.

        ``models`` is the validation of the message's models, under way in a worker: the
        exchange is committed meanwhile, its message ``validating``, so the sender waits
        for the longer of the two rather than their sum; nothing is forwarded before both
        are done. Raises Rejected before storing anything (a refusal of the models first);
        a message refused once stored is kept as an error and answered here.
        """
        routing = request.source.bars
        header = checked.header
        assert routing is not None and header is not None
        try:
            key, via, url = await self._destination(request, header)
        except Rejected:
            await models  # the models' refusal, if any, is the one the sender gets
            raise
        bars = {
            "target": str(key),
            "target_from": via,
            "source_endpoint": source_endpoint(header),
            "url": url,
        }
        item = checked_inbound(request, checked, source={"bars": bars}, status=VALIDATING)
        keys = conversation_keys(checked.document, header, request.headers)
        registration = _registration(checked.document, header, str(key))
        lease = routing.timeout + routing.connect_timeout * (routing.connect_retries + 1)
        opening = asyncio.ensure_future(self._open(item, url, lease + LEASE_MARGIN, keys))
        try:
            await models
        except Rejected as exc:
            return await self._refused(request, item, opening, exc)
        try:
            opened = await opening
        except Exception as exc:
            if is_store_outage(exc):
                return answer_unstored(self._unstored, request, exc)
            log.error("channel %s: could not store a BaRS message: %s", request.channel, exc)
            return not_stored(request.headers)
        started = utcnow()
        t0 = time.perf_counter()
        answer, sent, response, error = await self._forward(request, routing, url, key)
        outcome = Outcome(sent, started, (time.perf_counter() - t0) * 1000, response, error)
        if answer.status >= 500:  # tie's own 502 or 504: the receiver gave no usable answer
            reason = error or ""
            self._hops.failed(request.channel, FORWARD, url, opened.uuid, answer.status, reason)
        self._recorder.add(lambda conn: _settle(conn, item, opened, registration, outcome))
        return answer

    async def _open(
        self, item: Inbound, url: str, lease: float, keys: list[tuple[str, str]]
    ) -> Opened:
        """Store the exchange: a body above the blob threshold is first written to the blob
        store, off the loop, and the message and its delivery both name that one blob."""
        item.raw = await placed_off_loop(self._store.blobs, item.raw)
        # Records of earlier exchanges go now, queued just before this one: the writer
        # takes both in one batch, so they share its commit instead of costing their own.
        self._recorder.flush()
        return await asyncio.wrap_future(
            self._writer.run_soon(
                lambda conn: open_exchange(
                    conn,
                    item,
                    destination=FORWARD,
                    address=url,
                    owner=self._owner,
                    lease=lease,
                    keys=keys,
                    conversation=True,
                )
            )
        )

    async def _destination(
        self, request: FhirRequest, header: Mapping[str, Any]
    ) -> tuple[Key, str, str]:
        """The target key, where it came from, and the receiver's URL; 404 when the
        directory has no endpoint for the target and the event."""
        key, via = await self._target(request, header)
        event = event_of(header)
        endpoint = self._directory.lookup(key, event, "fhir")
        if endpoint is None:
            whose = " (the source.endpoint of the message it answers)" if via == ANSWERED else ""
            raise reject(
                404,
                "not-found",
                f"no FHIR endpoint for {key}{whose} and interaction {event!r} in the directory",
                via,
            )
        return key, via, join_url(endpoint.address, "$process-message")

    async def _refused(
        self, request: FhirRequest, item: Inbound, opening: asyncio.Future[Opened], exc: Rejected
    ) -> Answer:
        """A message whose models failed: kept as an error (its delivery cancelled) before
        the refusal is answered; raises ``exc`` if the exchange could not be stored, for the
        intake to store the refusal on its own."""
        try:
            opened = await opening
        except Exception:
            raise exc from None
        reason = rejected_reason(exc)
        work = self._writer.run_soon(
            lambda conn: refuse_exchange(conn, item, reason, opened.message_id)
        )
        try:
            await asyncio.wrap_future(work)
        except Exception as failure:
            log.error("channel %s: a refused message stays validating: %s", item.channel, failure)
        return rejected_answer(exc, request.headers)

    def release(self, item: Inbound, reason: str | None) -> Future[bool]:
        """Settle a BaRS message left ``validating`` (router.fhir.recovery): ``processed``
        with its ServiceRequests indexed, or an error with ``reason`` and its delivery, if
        still ``sending``, cancelled (it was never forwarded). Whether it was still
        validating. The delivery of a valid one, ``sending`` when the engine stopped, was
        failed as interrupted when the engine started again."""
        if reason is not None:
            return self._writer.run_soon(lambda conn: refuse_exchange(conn, item, reason))
        assert isinstance(item.raw, bytes)  # as recovery read it (from its blob, if large)
        document = json.loads(item.raw)
        header = document["entry"][0]["resource"]
        target = str(((item.source or {}).get("bars") or {}).get("target") or "")
        registration = _registration(document, header, target)
        return self._writer.run_soon(lambda conn: accept_message(conn, item, registration, None))

    async def _target(self, request: FhirRequest, header: Mapping[str, Any]) -> tuple[Key, str]:
        """The target key and where it came from (a 404's expression: an element or a
        header)."""
        answered = response_to(header)
        if is_response(header) and answered is not None:
            original = await asyncio.to_thread(self._original_sender, request.channel, answered)
            if original is not None:
                return original, ANSWERED
        key = target_for(header, request.headers)
        if request.headers.get("nhsd-target-identifier"):
            return key, "NHSD-Target-Identifier"
        return key, "Bundle.entry[0].resource.destination[0].endpoint"

    def _original_sender(self, channel: str, answered: str) -> Key | None:
        with self._store.read() as conn:
            row = find_original(conn, channel, answered)
        if row is None or not row.source:
            return None
        endpoint = (json.loads(row.source).get("bars") or {}).get("source_endpoint")
        try:
            return parse_key(endpoint) if endpoint else None
        except ValueError:
            return None

    async def _forward(
        self, request: FhirRequest, routing: BarsRouting, url: str, key: Key
    ) -> tuple[Answer, bool, bytes | None, str | None]:
        """(answer to the sender, delivered?, the receiver's answer as kept, error)."""
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            "NHSD-Target-Identifier": encode_target(key),
        }
        headers.update({n: request.headers[n] for n in PASSED_ON if request.headers.get(n)})
        response = await self._forwarder.send(
            request.channel,
            routing,
            "POST",
            url,
            headers.items(),
            request.body,
            peer=f"the receiver at {url}",
            limit=request.source.max_body,
            connect_retries=routing.connect_retries,
        )
        if isinstance(response, HopFailed):
            return self._failed(request, response.status, response.code, response.text)
        status, reason = response.status, response.reason
        kept = wire_parts(status, reason, response.headers, response.body)
        if status >= 500:
            text = f"the receiver at {url} answered {status} {reason}"
            answer, _, _, _ = self._failed(request, 502, "transient", text)
            return answer, False, kept, f"HTTP {status} {reason}"
        media = response.header("content-type", "application/fhir+json")
        answer = Answer(status, response.body, mirrored_headers(request.headers), media)
        error = None if 200 <= status < 300 else f"HTTP {status} {reason}"
        return answer, error is None, kept, error

    def _failed(
        self, request: FhirRequest, status: int, code: str, text: str
    ) -> tuple[Answer, bool, bytes | None, str | None]:
        outcome = operation_outcome([Issue(code, text)], status)
        return fhir_answer(status, outcome, request.headers), False, None, text


def _registration(
    document: Mapping[str, Any], header: Mapping[str, Any], target: str
) -> Registration:
    """The message's ServiceRequests and the referral's parties: its sender and target."""
    return Registration(service_requests(document), source_endpoint(header) or "", target)


def _settle(
    conn: Connection, item: Inbound, opened: Opened, registration: Registration, outcome: Outcome
) -> None:
    """The end of an exchange, recorded after the answer: the message processed with its
    ServiceRequests indexed, the receiver's answer kept with the delivery's attempt."""
    accept_message(conn, item, registration, opened.message_id)
    close_exchange(conn, opened.delivery_id, outcome)
