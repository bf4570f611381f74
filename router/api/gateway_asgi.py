"""The gateway's hot paths as plain ASGI, in front of the FastAPI app.

``POST /fhir/<channel>/$process-message``, ``POST /fhir/<channel>/<ResourceType>`` and
``ANY /proxy/<provider URL>`` are answered here, without FastAPI's routing, request
models and dependency machinery: a sender waits for each of them, and the booking
proxy's budget is 2 ms. Another method on a FHIR POST path is refused here too (405,
an OperationOutcome), except the registry's ``GET /fhir/<channel>/ServiceRequest``.
They are outside the app's route table, and check their senders' tokens themselves,
before a body is read (router/fhir/senders.py). Everything else goes on to the FastAPI app.

Every answer under ``/fhir`` and ``/proxy`` carries an ``X-Request-Id``
(router/fhir/request_id.py): a stored request's is the caller's or the message's UUID,
set where it is stored; any other answer (the registry's, the framework's 404, 405...)
gets the caller's or a fresh one on its way out.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from router import metrics
from router.api.fhir_errors import is_fhir_path
from router.config.http import HttpSource
from router.fhir.intake import KEPT_OF_REJECTED, Answer, FhirRequest, rejected_answer
from router.fhir.negotiation import unacceptable, unsupported
from router.fhir.outcome import Rejected, reject
from router.fhir.proxy import ProxyRequest, provider_url
from router.fhir.request_id import REQUEST_ID, callers_id

if TYPE_CHECKING:
    from router.engine import Engine

# The FHIR path the FastAPI app also answers (the ServiceRequest registry's search).
REGISTRY_SEARCH = ("ServiceRequest", "GET")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    def __init__(self, kept: bytes) -> None:
        self.kept = kept


@dataclass
class Incoming:
    """What the gateway needs of an ASGI request."""

    method: str
    raw_path: str
    query: str
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    remote: str

    @classmethod
    def of(cls, scope: Scope) -> Incoming:
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers: dict[str, str] = {}
        for name, value in pairs:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        client = scope.get("client")
        raw = scope.get("raw_path") or scope["path"].encode()
        return cls(
            scope["method"],
            raw.decode("latin-1"),
            scope.get("query_string", b"").decode("latin-1"),
            headers,
            pairs,
            f"{client[0]}:{client[1]}" if client else "",
        )


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The body, or BodyTooLarge (with what was read) as soon as it passes ``limit``."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(b"")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        event = await receive()
        if event["type"] == "http.disconnect":
            break
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(b"".join(chunks))
        chunks.append(chunk)
        more = event.get("more_body", False)
    return b"".join(chunks)


async def read_kept(receive: Receive) -> bytes:
    """The first 64 KiB of a refused request's body, to store with the reason; the rest is
    left unread."""
    kept = b""
    more = True
    while more and len(kept) < KEPT_OF_REJECTED:
        event = await receive()
        if event["type"] == "http.disconnect":
            break
        kept += event.get("body", b"")
        more = event.get("more_body", False)
    return kept[:KEPT_OF_REJECTED]


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def respond_fhir(send: Send, answer: Answer) -> None:
    headers = [("content-type", answer.media_type), *answer.headers.items()]
    await respond(send, answer.status, answer.body, headers)


def answer_id(headers: dict[str, str]) -> str:
    """The ``X-Request-Id`` of an answer that stores nothing: the caller's, else a new one."""
    return callers_id(headers.get(REQUEST_ID)) or str(uuid4())


def with_request_id(scope: Scope, send: Send) -> Send:
    """``send``, with the answer's ``X-Request-Id`` set (the caller's, else a new one)."""
    raw_name = REQUEST_ID.encode()
    sent = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == raw_name), "")
    value = (callers_id(sent) or str(uuid4())).encode("latin-1")

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != raw_name]
            message["headers"] = [*headers, (raw_name, value)]
        await send(message)

    return sending


def not_allowed(incoming: Incoming, operation: str) -> Answer:
    """405 for a method a FHIR POST path does not take: an OperationOutcome and ``Allow``,
    as a FHIR client expects, not the app's bare 404. Not stored: a request without a
    POST carries no message to replay."""
    allowed = "GET, POST" if operation == REGISTRY_SEARCH[0] else "POST"
    text = f"{incoming.method} is not allowed here (allowed: {allowed})"
    answer = rejected_answer(reject(405, "not-supported", text), incoming.headers)
    answer.headers["allow"] = allowed
    answer.headers[REQUEST_ID] = answer_id(incoming.headers)
    return answer


def no_channel(incoming: Incoming, channel: str) -> Answer:
    """404 for a channel that does not exist or is no FHIR source, whatever the method."""
    unknown = reject(404, "not-found", f"no FHIR channel named {channel!r}")
    answer = rejected_answer(unknown, incoming.headers)
    answer.headers[REQUEST_ID] = answer_id(incoming.headers)
    return answer


class GatewayRoutes:
    """Pure ASGI middleware: the FHIR POST endpoints and the proxy, else the next app."""

    def __init__(self, app: App, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/proxy/"):
                await self.proxy(Incoming.of(scope), receive, send)
                return
            if path.startswith("/fhir/") and await self.fhir_route(scope, receive, send):
                return
            if is_fhir_path(path):
                send = with_request_id(scope, send)
        await self.app(scope, receive, send)

    async def fhir_route(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer ``/fhir/<channel>/<operation>`` (a POST, or 405 for another method but
        the registry's search); False for a path the FastAPI app answers."""
        parts = scope["path"].split("/")
        if len(parts) != 4 or not parts[2] or not parts[3]:
            return False
        method, operation = scope["method"], parts[3]
        if method == "POST":
            await self.fhir(Incoming.of(scope), receive, send, parts[2], operation)
        elif (operation, method) == REGISTRY_SEARCH:
            return False
        elif self.fhir_channel(parts[2]) is None:
            await respond_fhir(send, no_channel(Incoming.of(scope), parts[2]))
        else:
            await respond_fhir(send, not_allowed(Incoming.of(scope), operation))
        return True

    def fhir_channel(self, channel: str) -> HttpSource | None:
        """The FHIR source of ``channel``; None when there is no such FHIR channel."""
        compiled = self.engine.channels.get(channel)
        return compiled.config.source.http if compiled is not None else None

    async def fhir(
        self, incoming: Incoming, receive: Receive, send: Send, channel: str, operation: str
    ) -> None:
        compiled = self.engine.channels.get(channel)
        source = self.fhir_channel(channel)
        if compiled is None or source is None:
            # Not stored: a message is stored in its channel, and there is none.
            await respond_fhir(send, no_channel(incoming, channel))
            return
        message = operation == "$process-message"
        request = FhirRequest(
            channel,
            source,
            "process-message" if message else "create",
            b"",
            incoming.headers,
            incoming.remote,
            f"/fhir/{channel}/{operation}",
            None if message else operation,
            compiled.config.idempotent.window if compiled.config.idempotent else None,
        )
        intake = self.engine.gateway.intake
        try:
            credentials = incoming.headers.get("authorization", "")
            request.user = await self.engine.gateway.senders.check(
                credentials, channel, source, peer=incoming.remote
            )
        except Rejected as exc:
            # Before the body is read: a sender that may not send makes tie read no more
            # than the part it keeps.
            request.body = await read_kept(receive)
            await respond_fhir(send, await intake.turn_away(request, exc))
            return
        try:
            request.body = await read_body(receive, incoming.headers, source.max_body)
        except BodyTooLarge as exc:
            request.body = exc.kept
            text = f"the body is larger than {source.max_body} bytes"
            await respond_fhir(send, await intake.refuse(request, 413, "too-costly", text))
            return
        unsupported_body = unsupported(incoming.headers, source.fhir)
        if unsupported_body is not None:
            await respond_fhir(send, await intake.turn_away(request, unsupported_body))
            return
        accept = incoming.headers.get("accept", "")
        not_acceptable = unacceptable(accept, incoming.query, source.fhir)
        if not_acceptable is not None:
            await respond_fhir(send, await intake.turn_away(request, not_acceptable))
            return
        if message and not source.events:
            text = f"channel {channel} takes no messages"
            await respond_fhir(send, await intake.refuse(request, 404, "not-found", text))
            return
        if not message and operation not in source.resources:
            text = f"channel {channel} takes no {operation}"
            await respond_fhir(send, await intake.refuse(request, 404, "not-found", text))
            return
        started = time.perf_counter()
        await respond_fhir(send, await intake.accept(request))
        metrics.ACK_LATENCY.labels(channel, "fhir").observe(time.perf_counter() - started)

    async def proxy(self, incoming: Incoming, receive: Receive, send: Send) -> None:
        proxy = self.engine.gateway.proxy
        channel = next(
            (c for c in self.engine.channels.values() if c.config.source.proxy is not None), None
        )
        if channel is None:
            unknown = reject(404, "not-found", "this engine has no booking proxy")
            answer = proxy.refusal(unknown, answer_id(incoming.headers))
            await respond(send, answer.status, answer.body, answer.headers)
            return
        options = channel.config.source.proxy
        assert options is not None
        request = ProxyRequest(
            channel.name,
            options,
            incoming.method,
            provider_url(incoming.raw_path.split("/proxy/", 1)[1], incoming.query),
            incoming.header_list,
            b"",
            incoming.remote,
        )
        try:
            credentials = incoming.headers.get("proxy-authorization", "")
            senders = self.engine.gateway.senders
            request.user = await senders.check(
                credentials, channel.name, options, proxy=True, peer=incoming.remote
            )
        except Rejected as exc:
            request.body = await read_kept(receive)
            answer = await proxy.refuse(request, exc)
            await respond(send, answer.status, answer.body, answer.headers)
            return
        try:
            request.body = await read_body(receive, incoming.headers, options.max_body)
        except BodyTooLarge as exc:
            request.body = exc.kept
            text = f"the body is larger than {options.max_body} bytes"
            answer = await proxy.refuse(request, reject(413, "too-costly", text))
        else:
            answer = await proxy.handle(request)
        await respond(send, answer.status, answer.body, answer.headers)
