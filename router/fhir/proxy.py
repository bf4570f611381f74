"""The booking proxy, in the style of the Spine Secure Proxy (docs/fhir.md#booking-proxy).

``ANY /proxy/<full provider URL>`` with ``Ssp-TraceID``, ``Ssp-From``, ``Ssp-To`` and
``Ssp-InteractionID``. The calling ASID must be registered in the directory for the
interaction, the provider's ASID must have an endpoint for it, and the URL must lie
under that endpoint: the proxy never reaches any other host. The provider's answer
comes back unchanged (201 and 422 included). Every exchange, refused or forwarded, is
stored, searchable by its trace id (the message's control id) and by the ``X-Request-Id``
that every answer carries (the caller's, else the stored message's UUID), so a caller
refused at night has an id to quote to support.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from sqlalchemy import Connection, bindparam, select

from router.api.security import CSRF_HEADER, SESSION_COOKIE
from router.auth.tokens import PREFIX as TOKEN_PREFIX
from router.config.http import ProxySource
from router.connectors.http import wire_parts
from router.directory import Directory, Key, make_key
from router.fhir import FHIR_JSON
from router.fhir.exchange import PROVIDER, Outcome, open_exchange
from router.fhir.forwarding import Forwarder, HopFailed
from router.fhir.hop_log import HopLog
from router.fhir.outcome import Issue, Rejected, operation_outcome, reject
from router.fhir.recorder import Recorder
from router.fhir.request_id import REQUEST_ID, callers_id, request_keys
from router.fhir.senders import bearer
from router.payload import Payload
from router.store.blobs import BlobStore
from router.store.database import StoreUnavailable
from router.store.fast_insert import insert_rows
from router.store.inbound import (
    SSP_FROM_KEY,
    Inbound,
    time_ordered_uuid,
    utcnow,
    write_inbound,
)
from router.store.placement import placed_off_loop
from router.store.schema import correlations, messages

log = logging.getLogger(__name__)
SSP = ("ssp-traceid", "ssp-from", "ssp-to", "ssp-interactionid")
# Not passed on either way: they describe one connection, not the exchange. Date and Server
# are the proxy's own; Content-Length is recomputed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
NOT_ANSWERED = HOP_BY_HOP | {"date", "server"}
TIE_COOKIES = "tie_"  # the console's session and sign-in cookies
# With the stored request (never Authorization).
KEPT_HEADERS = (*SSP, "content-type", "accept", REQUEST_ID)
KEPT_OF_REFUSED = 64 * 1024  # of a refused request's body, stored with its reason
_UUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_ASID = re.compile(r"[0-9]+")  # digits (Spine's are 12; the length is left to the directory)


@dataclass
class ProxyRequest:
    channel: str
    options: ProxySource
    method: str
    url: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    remote: str
    user: str | None = None  # the sender's API user, when the proxy takes tokens
    uuid: str = field(default_factory=time_ordered_uuid)  # of the message that stores it

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value.strip()
        return ""

    @property
    def callers_id(self) -> str | None:
        """The caller's own ``X-Request-Id``, when it sent a usable one."""
        return callers_id(self.header(REQUEST_ID))

    @property
    def request_id(self) -> str:
        """The id every answer carries: the caller's, else the stored message's UUID (which
        ``/api/messages?key=`` and ``run.py show`` find)."""
        return self.callers_id or self.uuid


@dataclass
class ProxyAnswer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def provider_url(raw_path: str, query: str) -> str:
    """The provider URL written after ``/proxy/`` (a ``//`` some clients squash restored)."""
    url = re.sub(r"^(https?):/(?!/)", r"\1://", raw_path)
    return f"{url}?{query}" if query else url


def under(url: str, base: str) -> bool:
    """Whether ``url`` is ``base`` or below it: same scheme, host and port, a path under
    the base's, no user info and no ``.``/``..`` segments."""
    try:
        u, b = urlsplit(url), urlsplit(base)
        ports = (u.port or _default_port(u.scheme), b.port or _default_port(b.scheme))
    except ValueError:
        return False
    if u.scheme.lower() not in ("http", "https") or "@" in u.netloc:
        return False
    if (u.scheme.lower(), (u.hostname or "").lower()) != (b.scheme.lower(), (b.hostname or "")):
        return False
    if ports[0] != ports[1]:
        return False
    segments = unquote(u.path).split("/")
    if any(s in (".", "..") for s in segments) or posixpath.normpath(u.path or "/") != (
        u.path.rstrip("/") or "/"
    ):
        return False
    prefix = b.path.rstrip("/")
    return u.path.rstrip("/") == prefix or u.path.startswith(prefix + "/")


def passed_on(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The request's headers as the provider gets them: without hop-by-hop headers (the
    sender's tie token comes in ``Proxy-Authorization``, one of them), nor tie's own
    credentials (its console session cookie, its CSRF token, a tie API token), which a
    browser signed in to tie sends with any request to it and which are no business of the
    provider's. The caller's ``Authorization`` is meant for the provider and goes on,
    unless it is a tie token sent there by mistake."""
    kept = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered == CSRF_HEADER.lower():
            continue
        if lowered == "authorization" and (bearer(value) or "").startswith(TOKEN_PREFIX):
            continue
        if lowered == "cookie":
            crumbs = [c for c in value.split(";") if c.split("=", 1)[0].strip() != SESSION_COOKIE]
            value = ";".join(crumbs).strip()
            if not value:
                continue
        kept.append((name, value))
    return kept


def _answered(name: str, value: str) -> bool:
    """Whether a provider's answer header goes back to the caller: not hop-by-hop, and no
    cookie in tie's own namespace (``tie_*``), which a provider could otherwise plant on
    tie's origin in a signed-in browser (a session fixed by someone else)."""
    lowered = name.lower()
    if lowered == "set-cookie":
        return not value.split("=", 1)[0].strip().lower().startswith(TIE_COOKIES)
    return lowered not in NOT_ANSWERED


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


class BookingProxy:
    def __init__(
        self,
        recorder: Recorder,
        directory: Directory,
        forwarder: Forwarder,
        owner: str,
        blobs: BlobStore,
    ) -> None:
        self._recorder = recorder
        self._blobs = blobs
        self._directory = directory
        self._owner = owner
        self._forwarder = forwarder
        self._hops = HopLog(log)

    async def handle(self, request: ProxyRequest) -> ProxyAnswer:
        try:
            caller, _ = self._check(request)
        except Rejected as exc:
            return await self.refuse(request, exc)
        # A body above the blob threshold is written to the blob store while it is forwarded.
        placing = asyncio.ensure_future(placed_off_loop(self._blobs, request.body))
        started = utcnow()
        t0 = time.perf_counter()
        answer, sent, kept, error = await self._forward(request)
        duration = (time.perf_counter() - t0) * 1000
        try:
            body = await placing
        except StoreUnavailable as exc:
            log.error("booking proxy: exchange %s could not be recorded: %s", request.uuid, exc)
        else:
            item = self._inbound(request, body, status="processed")
            self._store_exchange(item, request, caller, started, duration, sent, kept, error)
        if not any(name.lower() == REQUEST_ID for name, _ in answer.headers):
            answer.headers.append((REQUEST_ID, request.request_id))
        return answer

    async def refuse(self, request: ProxyRequest, exc: Rejected) -> ProxyAnswer:
        """Answer ``exc`` and keep the refused request (its first 64 KiB) with the reason
        (in the blob store above its threshold)."""
        request.body = request.body[:KEPT_OF_REFUSED]
        try:
            body = await placed_off_loop(self._blobs, request.body)
        except StoreUnavailable as unstored:
            log.error("booking proxy: refusal %s could not be recorded: %s", request.uuid, unstored)
        else:
            reason = f"refused ({exc.status}): {exc.reason}"
            self._store_refused(self._inbound(request, body, status="error", error=reason), request)
        return self.refusal(exc, request.request_id)

    def refusal(self, exc: Rejected, request_id: str) -> ProxyAnswer:
        """The proxy's own answer: an OperationOutcome with the request's ``X-Request-Id``."""
        body = json.dumps(operation_outcome(exc.issues, exc.status)).encode()
        headers = [
            ("content-type", "application/fhir+json"),
            (REQUEST_ID, request_id),
            *exc.headers.items(),
        ]
        return ProxyAnswer(exc.status, body, headers)

    def _check(self, request: ProxyRequest) -> tuple[Key, str]:
        """(the caller's key, the interaction), or Rejected: 400 for a malformed request,
        403 for a caller or URL the directory does not allow, 404 for an unknown provider."""
        values = {}
        for name in SSP:
            values[name] = request.header(name)
            if not values[name]:
                raise reject(400, "required", f"the {_title(name)} header is missing", _title(name))
        if not _UUID.match(values["ssp-traceid"]):
            raise reject(400, "invalid", "Ssp-TraceID is not a UUID", "Ssp-TraceID")
        keys = {}
        for name in ("ssp-from", "ssp-to"):
            title = _title(name)
            if not _ASID.fullmatch(values[name]):
                raise reject(400, "invalid", f"{title} is not an ASID (digits only)", title)
            try:
                keys[name] = make_key("asid", values[name])
            except ValueError as exc:
                raise reject(400, "invalid", str(exc), title) from exc
        interaction = values["ssp-interactionid"]
        caller, provider = keys["ssp-from"], keys["ssp-to"]
        if not self._directory.registered(caller, interaction):
            raise reject(
                403,
                "forbidden",
                f"ASID {caller.identifier} is not registered for {interaction}",
                "Ssp-From",
            )
        endpoint = self._directory.lookup(provider, interaction, "fhir")
        if endpoint is None:
            raise reject(
                404,
                "not-found",
                f"ASID {provider.identifier} has no endpoint for {interaction}",
                "Ssp-To",
            )
        if not under(request.url, endpoint.address):
            raise reject(
                403,
                "forbidden",
                f"{request.url} is not under the endpoint of ASID {provider.identifier} "
                f"for {interaction} ({endpoint.address})",
            )
        return caller, interaction

    async def _forward(
        self, request: ProxyRequest
    ) -> tuple[ProxyAnswer, bool, bytes | None, str | None]:
        response = await self._forwarder.send(
            request.channel,
            request.options,
            request.method,
            request.url,
            passed_on(request.headers),
            request.body,
            peer="the provider",
            limit=request.options.max_body,
        )
        if isinstance(response, HopFailed):
            self._hops.failed(
                request.channel,
                PROVIDER,
                request.url,
                request.uuid,
                response.status,
                response.text,
            )
            return self._failed(request, response.status, response.code, response.text)
        answered = [(k, v) for k, v in response.headers if _answered(k, v)]
        status, body = response.status, response.body
        error = None if 200 <= status < 300 else f"HTTP {status} {response.reason}"
        kept = wire_parts(status, response.reason, response.headers, body)
        return ProxyAnswer(status, body, answered), error is None, kept, error

    def _failed(
        self, request: ProxyRequest, status: int, code: str, text: str
    ) -> tuple[ProxyAnswer, bool, None, str]:
        answer = self.refusal(Rejected(status, [Issue(code, text)]), request.request_id)
        return answer, False, None, text

    def _inbound(self, request: ProxyRequest, body: bytes | Payload, **extra: Any) -> Inbound:
        """The request as stored, ``body`` placed (router.store.placement)."""
        kept = {n: request.header(n) for n in KEPT_HEADERS if request.header(n)}
        media = request.header("content-type").split(";")[0].strip().lower()
        return Inbound(
            request.channel,
            body,
            content_type=FHIR_JSON if media.endswith("json") else "http",
            message_type=request.header("ssp-interactionid") or None,
            control_id=request.header("ssp-traceid") or None,
            sender=request.header("ssp-from") or None,
            source={
                "protocol": "http",
                "method": request.method,
                "url": request.url,
                "remote": request.remote,
                "headers": kept,
                **({"user": request.user} if request.user else {}),
            },
            uuid=request.uuid,
            **extra,
        )

    def _store_exchange(
        self,
        item: Inbound,
        request: ProxyRequest,
        caller: Key,
        started: Any,
        duration_ms: float,
        sent: bool,
        kept: bytes | None,
        error: str | None,
    ) -> None:
        """One transaction: the request, its delivery to the provider, the provider's answer."""
        trace = request.header("ssp-traceid")

        outcome = Outcome(sent, started, duration_ms, kept, error)
        self._recorder.add(
            lambda conn: open_exchange(
                conn,
                item,
                destination=PROVIDER,
                address=request.url,
                owner=self._owner,
                lease=request.options.timeout,
                keys=[("ssp_trace_id", trace), (SSP_FROM_KEY, str(caller)), *_request_key(request)],
                outcome=outcome,
            )
        )

    def _store_refused(self, item: Inbound, request: ProxyRequest) -> None:
        self._recorder.add(lambda conn: _write_refused(conn, item, _request_key(request)))


def _request_key(request: ProxyRequest) -> list[tuple[str, str]]:
    return list(request_keys(request.header(REQUEST_ID)))


_MESSAGE_ID = select(messages.c.id).where(messages.c.uuid == bindparam("uuid"))


def _write_refused(conn: Connection, item: Inbound, keys: list[tuple[str, str]]) -> None:
    write_inbound(conn, [item])
    if not keys:
        return
    message_id = item.id if item.id is not None else conn.scalar(_MESSAGE_ID, {"uuid": item.uuid})
    insert_rows(
        conn, correlations, [{"message_id": message_id, "key": k, "value": v} for k, v in keys]
    )


def _title(name: str) -> str:
    return {
        "ssp-traceid": "Ssp-TraceID",
        "ssp-from": "Ssp-From",
        "ssp-to": "Ssp-To",
        "ssp-interactionid": "Ssp-InteractionID",
    }[name]
