"""A lean HTTP client for the synchronous exchanges (BaRS forwarding, the booking proxy).

aiohttp's client: its C parser and its writer on an asyncio protocol cost about a third of
what httpcore's pure-Python stack (h11, anyio) did on this hop, and the sender is waiting.
It is held to what a proxy must do: nothing is added to the request but Host and
Content-Length (no User-Agent, Accept, Accept-Encoding or default Content-Type), no
cookies are kept, redirects are not followed, no proxy is taken from the environment, and
bodies come back as they were sent (a gzip answer stays gzip). Nor is a request sent
again: aiohttp would resend an idempotent one (PUT, DELETE...) whose connection closed
before an answer, but the receiver may have acted, and the sender owns the retry.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from yarl import URL

from router.config.http import TlsOptions
from router.connectors.http import ssl_context, unanswered_reason

DEFAULT_LIMIT = 10 * 1024 * 1024  # of an answer's body: like the sources' default max_body
MAX_CONNECTIONS = 10  # kept-alive connections per client (as httpcore's pool had)
MAX_FIELD = 16 * 1024  # of the status line, of one header (h11 allowed a 16 KiB head)
# aiohttp's defaults that a proxy must not add to what it passes on.
HUNG_UP_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE})
NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class ConnectFailed(Exception):
    """No connection could be made: nothing reached the receiver."""


class Unverified(ConnectFailed):
    """The receiver's certificate could not be verified: trying again at once would fail
    the same way, until its certificate or the channel's ``tls.ca`` changes."""


class TimedOut(Exception):
    """The receiver did not answer in time (it may have received the request)."""


class Broken(Exception):
    """The exchange broke off part way (the receiver may have received the request)."""


class TooLarge(Broken):
    """The answer's body passed the limit: it is not read further (nor passed on)."""


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return default


def _spelled_alike(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Repeats of a header spelled as its first: aiohttp keeps only the last of a name
    spelled in two ways (``X-A``, ``x-a``), and every one of a name spelled in one."""
    first: dict[str, str] = {}
    return [(first.setdefault(name.lower(), name), value) for name, value in headers]


class RawClient:
    """Kept-alive connections to any receiver, with one TLS setup and one set of timeouts.

    ``connect_timeout`` bounds waiting for a pooled connection and making one (TCP and
    TLS); ``timeout`` bounds the whole exchange, writing the request included.
    """

    def __init__(self, tls: TlsOptions, timeout: float, connect_timeout: float) -> None:
        self._tls = tls
        self._ssl = ssl_context(tls)
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None  # made in the event loop

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=MAX_CONNECTIONS)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=NOT_ADDED,
            auto_decompress=False,
            trust_env=False,
            max_line_size=MAX_FIELD,
            max_field_size=MAX_FIELD,
        )
        # No public switch; tests/integration/test_http_client.py shows it still holds.
        self._session._retry_connection = False
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        limit: int = DEFAULT_LIMIT,
    ) -> RawResponse:
        """The answer, read whole; ``TooLarge`` as soon as its body passes ``limit`` bytes."""
        session = self._session or self._open()
        try:
            async with session.request(
                method,
                URL(url, encoded=True),  # sent as given, not re-quoted
                headers=_spelled_alike(headers),
                data=body or None,
                allow_redirects=False,
            ) as response:
                chunks, size = [], 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        response.close()  # the connection is not reused
                        raise TooLarge(f"the answer is larger than {limit} bytes")
                    chunks.append(chunk)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise Unverified(f"ConnectError: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:  # refused, unresolved, TLS refused
            # The reason is kept: "certificate verify failed: self-signed certificate" is
            # what an operator needs to see, where a bare ConnectError sends them hunting.
            raise ConnectFailed(f"ConnectError: {_unconnected(url, exc)}") from exc
        except aiohttp.ConnectionTimeoutError as exc:  # no connection, or no pooled one, in time
            raise ConnectFailed("ConnectTimeout") from exc
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise TimedOut(type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            hint = unanswered_reason(url, self._tls) if _hung_up(exc) else ""
            raise Broken(f"{type(exc).__name__}: {exc}{hint}") from exc
        return RawResponse(
            response.status,
            response.reason or "",
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers],
            b"".join(chunks),
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _hung_up(exc: aiohttp.ClientError) -> bool:
    """Whether the receiver ended a connection it had accepted: closed, or (as often, for a
    TLS 1.3 server refusing a missing client certificate) reset, or gone while written to."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and exc.errno in HUNG_UP_ERRNOS


def _unconnected(url: str, exc: aiohttp.ClientConnectorError) -> str:
    """Why no connection to ``url`` was made. aiohttp's own text names its TLS setting even
    for plain HTTP (``Cannot connect to host h:80 ssl:default [...]``), which sends support
    looking at certificates: a plain-HTTP receiver's reason is its address and the error."""
    if not url.lower().startswith("http://"):
        return str(exc)
    return f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}"
