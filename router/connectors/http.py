"""The HTTP destination: POST or PUT each delivery, FHIR or not, and keep the answer.

2xx is sent. 5xx, 408, 429 and a timeout or lost connection are retried (a
``Retry-After`` from the receiver says when); any other status fails the delivery,
since sending the same request again would get the same answer. The response
(status line, headers and body) is kept with the attempt as received.
"""

from __future__ import annotations

import asyncio
import email.utils
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import certifi
import httpx

from router.config.http import HttpTarget, TlsOptions
from router.connectors import Delivery, SendResult, media_type
from router.payload import Payload

MAX_KEPT = 1024 * 1024  # of a response body kept with an attempt
RETRY_STATUSES = frozenset({408, 429})


def ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """Verify servers against ``tls.ca`` (default: the certifi bundle); present ``tls.cert``.

    One context per set of files as they are now, shared: an engine makes a sender per
    destination and dispatch worker, and loading the CA bundle took 60 ms each (half a
    second of a small engine's start). A file replaced since (another size or modification
    time, as a renewal gives) makes a new context."""
    files = (tls.ca, tls.cert, tls.key)
    return _context(*files, tls.verify, tuple(_stamp(path) for path in files))


@lru_cache(maxsize=64)
def _context(
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    verify: bool,
    stamps: tuple[tuple[int, int] | None, ...],
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca else certifi.where())
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def _stamp(path: Path | None) -> tuple[int, int] | None:
    """A file's size and modification time; None for no file or one not there (loading
    it then fails as it always did, and a failure is not cached)."""
    if path is None:
        return None
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def unanswered_reason(url: str, tls: TlsOptions) -> str:
    """What to add to "the server disconnected" on an HTTPS exchange with no client
    certificate configured: under TLS 1.3 a server that requires one refuses it only
    after the handshake, and the client learns of it at its first read, as a connection
    closed without an answer. Empty when a certificate is configured or the URL is plain
    HTTP (nothing suggests a certificate then)."""
    if tls.cert is not None or not url.lower().startswith("https:"):
        return ""
    return (
        "; the server closed the connection after the TLS handshake: it may require a "
        "client certificate, and none is configured (tls.cert)"
    )


def make_client(tls: TlsOptions, timeout: float, connect_timeout: float) -> httpx.AsyncClient:
    """A pooled client; redirects are not followed (a 3xx is the receiver's answer)."""
    return httpx.AsyncClient(
        verify=ssl_context(tls),
        timeout=httpx.Timeout(timeout, connect=connect_timeout),
        follow_redirects=False,
        trust_env=False,
    )


def join_url(base: str, path: str) -> str:
    if not path:
        return base
    return base.rstrip("/") + "/" + path.lstrip("/")


def retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay seconds or an HTTP date), if any."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def wire(response: httpx.Response, body: bytes, limit: int = MAX_KEPT) -> bytes:
    """The response as it came: status line, headers, blank line, body (bounded)."""
    return wire_parts(
        response.status_code, response.reason_phrase, response.headers.multi_items(), body, limit
    )


def wire_parts(
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    limit: int = MAX_KEPT,
) -> bytes:
    """``wire`` from the parts of a response."""
    head = [f"HTTP/1.1 {status} {reason}".rstrip()]
    head.extend(f"{name}: {value}" for name, value in headers)
    kept = body[:limit]
    if len(body) > limit:
        kept += f"\n[{len(body) - limit} more bytes not kept]".encode()
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", errors="replace") + kept


def classify(response: httpx.Response, body: bytes) -> SendResult:
    """What an HTTP answer means for the delivery."""
    status = response.status_code
    kept = wire(response, body)
    if 200 <= status < 300:
        return SendResult("sent", response=kept)
    error = f"HTTP {status} {response.reason_phrase}".rstrip()
    if status >= 500 or status in RETRY_STATUSES:
        return SendResult("retry", kept, error, retry_after(response.headers))
    return SendResult("fail", kept, error)


class HttpSender:
    def __init__(self, target: HttpTarget) -> None:
        self._target = target
        self._client = make_client(target.tls, target.timeout, target.connect_timeout)

    async def send(self, delivery: Delivery) -> SendResult:
        target = self._target
        base = delivery.address or target.url
        if not base:
            return SendResult("fail", error="no URL: the destination has none and no address")
        url = join_url(base, target.path)
        try:
            headers = render_headers(target, delivery)
        except (KeyError, ValueError) as exc:
            return SendResult("fail", error=f"header template: {exc}")
        try:
            response = await self._client.request(
                target.method, url, content=_content(delivery.body), headers=headers
            )
        except httpx.TimeoutException as exc:
            return SendResult("retry", error=f"{type(exc).__name__}: no answer from {url}")
        except httpx.TransportError as exc:
            # A connection closed once made is a RemoteProtocolError, or a ReadError or
            # WriteError with no message of its own (a reset, a broken pipe).
            closed = isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError)
            hint = unanswered_reason(url, target.tls) if closed else ""
            return SendResult("retry", error=f"{type(exc).__name__}: {str(exc) or url}{hint}")
        return classify(response, response.content)

    async def close(self) -> None:
        await self._client.aclose()


def render_headers(target: HttpTarget, delivery: Delivery) -> dict[str, str]:
    values = {
        "channel": delivery.channel,
        "destination": delivery.destination,
        "message_id": delivery.message_id,
        "message_uuid": delivery.message_uuid,
        "delivery_id": delivery.id,
        "idempotency_key": delivery.idempotency_key or "",
        "attempt": delivery.attempts + 1,
    }
    headers = {"Content-Type": target.content_type or media_type(delivery.content_type)}
    for name, template in target.headers.items():
        headers[name] = template.format(**values).replace("\r", " ").replace("\n", " ")
    return headers


def _content(body: Payload) -> bytes | AsyncIterator[bytes]:
    """Small payloads as bytes; a blob streamed from disk in chunks."""
    if not body.is_blob:
        return body.read()

    async def stream() -> AsyncIterator[bytes]:
        chunks = body.chunks()
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            yield chunk

    return stream()
