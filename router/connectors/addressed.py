"""Destinations whose address comes from the endpoint directory, one delivery at a time.

The pipeline resolves each delivery's address when the message is processed and
stores it with the delivery. A transport whose sender is bound to one address
(MLLP keeps a connection open) gets a sender per address through ``AddressedSender``.
"""

from __future__ import annotations

from collections.abc import Callable

from router.config import DestinationConfig
from router.connectors import Delivery, Sender, SendResult
from router.directory import split_host_port

# Destination kinds whose senders are bound to one address.
BOUND = ("mllp",)


def with_address(config: DestinationConfig, address: str) -> DestinationConfig:
    """``config`` with its fixed address set to ``address`` (and no lookup left to do)."""
    if config.mllp is not None:
        host, port = split_host_port(address)
        target = config.mllp.model_copy(update={"host": host, "port": port})
        return config.model_copy(update={"mllp": target, "directory": None})
    raise ValueError(f"a {config.kind} destination cannot take an address from the directory")


class AddressedSender:
    """Sends each delivery through the sender for its own address, made on first use."""

    def __init__(self, make: Callable[[str], Sender]) -> None:
        self._make = make
        self._senders: dict[str, Sender] = {}

    async def send(self, delivery: Delivery) -> SendResult:
        if not delivery.address:
            return SendResult("fail", error="delivery has no address from the directory")
        sender = self._senders.get(delivery.address)
        if sender is None:
            try:
                sender = self._make(delivery.address)
            except ValueError as exc:
                return SendResult("fail", error=str(exc))
            self._senders[delivery.address] = sender
        return await sender.send(delivery)

    async def close(self) -> None:
        senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            await sender.close()
