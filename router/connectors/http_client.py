"""A lean HTTP client for the synchronous exchanges (BaRS forwarding, the booking proxy).

httpcore's connection pool, which httpx is built on, without httpx's request and
response models: the sender is waiting, and this hop should cost as little as it can.
Bodies come back as they were sent (a gzip answer stays gzip), which is what a proxy
must pass on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpcore

from router.config.http import TlsOptions
from router.connectors.http import ssl_context

DEFAULT_LIMIT = 10 * 1024 * 1024  # of an answer's body: like the sources' default max_body


class ConnectFailed(Exception):
    """No connection could be made: nothing reached the receiver."""


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


class RawClient:
    def __init__(self, tls: TlsOptions, timeout: float, connect_timeout: float) -> None:
        self._pool = httpcore.AsyncConnectionPool(ssl_context=ssl_context(tls), retries=0)
        self._timeouts = {
            "connect": connect_timeout,
            "read": timeout,
            "write": timeout,
            "pool": connect_timeout,
        }

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
        try:
            async with self._pool.stream(
                method,
                url,
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
                content=body or None,
                extensions={"timeout": self._timeouts},
            ) as response:
                chunks, size = [], 0
                async for chunk in response.aiter_stream():
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge(f"the answer is larger than {limit} bytes")
                    chunks.append(chunk)
        except (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.PoolTimeout) as exc:
            raise ConnectFailed(type(exc).__name__) from exc
        except httpcore.TimeoutException as exc:
            raise TimedOut(type(exc).__name__) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise Broken(f"{type(exc).__name__}: {exc}") from exc
        reason = response.extensions.get("reason_phrase", b"")
        return RawResponse(
            response.status,
            reason.decode("latin-1") if isinstance(reason, bytes) else str(reason),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers],
            b"".join(chunks),
        )

    async def close(self) -> None:
        await self._pool.aclose()
