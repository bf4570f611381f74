"""One synchronous hop, shared by BaRS routing and the booking proxy: a connection pool per
channel, and a request whose transport failures become the gateway answer tie gives.

A connection that could not be made is tried again (``connect_retries``): nothing reached
the receiver, so it cannot act twice; but not a receiver whose certificate could not be
verified, which would fail the same way at once. A timeout or a broken exchange is never retried:
the receiver may have acted, and the sender, told so, owns the retry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from router.config.http import TlsOptions
from router.connectors.http_client import (
    Broken,
    ConnectFailed,
    RawClient,
    RawResponse,
    TimedOut,
    Unverified,
)


class HopOptions(Protocol):
    """What a hop needs of its channel's options (``BarsRouting``, ``ProxySource``)."""

    tls: TlsOptions
    timeout: float
    connect_timeout: float


@dataclass(frozen=True, slots=True)
class HopFailed:
    """No answer from the receiver: the status tie answers (502, 504), its issue code, why."""

    status: int
    code: str
    text: str


class Forwarder:
    """Kept-alive connections per channel (each channel has its own TLS and timeouts)."""

    def __init__(self) -> None:
        self._clients: dict[str, RawClient] = {}

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    def _client(self, channel: str, options: HopOptions) -> RawClient:
        client = self._clients.get(channel)
        if client is None:
            client = RawClient(options.tls, options.timeout, options.connect_timeout)
            self._clients[channel] = client
        return client

    async def send(
        self,
        channel: str,
        options: HopOptions,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        peer: str,
        limit: int,
        connect_retries: int = 0,
    ) -> RawResponse | HopFailed:
        """The receiver's answer, or how the hop failed (``peer`` names it to the sender).

        An answer whose body passes ``limit`` bytes is a failed hop (502): tie holds what it
        passes on in memory, so it bounds it as it bounds what it is sent.
        """
        client = self._client(channel, options)
        headers = list(headers)
        retries = connect_retries
        while True:
            try:
                return await client.request(method, url, headers, body, limit=limit)
            except ConnectFailed as exc:
                if retries > 0 and not isinstance(exc, Unverified):
                    retries -= 1
                    continue
                return HopFailed(502, "transient", f"{peer} could not be reached: {exc}")
            except TimedOut:
                text = f"{peer} did not answer within {options.timeout:g}s"
                return HopFailed(504, "timeout", text)
            except Broken as exc:
                return HopFailed(502, "transient", f"the exchange with {peer} broke off: {exc}")
