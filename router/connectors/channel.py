"""The channel destination: a delivery becomes a new message of another channel.

The new message records the delivery it came from, so a retried delivery never
feeds the same message twice, and how many channels fed it in a row: a configuration
that loops (a channel feeding itself, or a to b to a) fails the delivery at ``MAX_HOPS``
instead of multiplying one message without end.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from sqlalchemy import select

from router.config import ChannelTarget
from router.connectors import Delivery, SendResult
from router.connectors.hl7_inbound import hl7_inbound
from router.store.database import Store
from router.store.inbound import Inbound, write_inbound
from router.store.placement import placed
from router.store.schema import messages

MAX_HOPS = 16


class ChannelSender:
    def __init__(
        self, target: ChannelTarget, store: Store, on_commit: Callable[[], None] | None = None
    ) -> None:
        self._target = target
        self._store = store
        self._on_commit = on_commit

    async def send(self, delivery: Delivery) -> SendResult:
        uuid = await asyncio.to_thread(self._feed, delivery)
        if uuid is None:
            loop = f"channel loop: the message has been fed through {MAX_HOPS} channels in a row"
            return SendResult("fail", error=loop)
        if self._on_commit is not None:
            self._on_commit()
        return SendResult("sent", response=f"urn:tie:message:{uuid}".encode())

    def _feed(self, delivery: Delivery) -> str | None:
        """The new message's uuid (the one made before, for a retried delivery); None when
        the message has already gone through ``MAX_HOPS`` channel destinations."""
        item = self._inbound(delivery)
        with self._store.begin() as conn:
            existing = conn.scalar(
                select(messages.c.uuid).where(messages.c.origin_delivery_id == delivery.id)
            )
            if existing is not None:
                return existing
            hops = (
                _hops(
                    conn.scalar(
                        select(messages.c.source).where(messages.c.id == delivery.message_id)
                    )
                )
                + 1
            )
            if hops > MAX_HOPS:
                return None
            item.source = {
                "protocol": "channel",
                "channel": delivery.channel,
                "message": delivery.message_uuid,
                "delivery": delivery.id,
                "hops": hops,
            }
            return write_inbound(conn, [item])[0].uuid

    def _inbound(self, delivery: Delivery) -> Inbound:
        """The new message, its body placed (router.store.placement) before the transaction
        that stores it: a blob passed on stays one, a large inline payload becomes one."""
        channel, blobs = self._target.channel, self._store.blobs
        if delivery.content_type == "hl7v2":
            item = hl7_inbound(channel, delivery.body.read(), origin_delivery_id=delivery.id)
        else:
            item = Inbound(
                channel,
                delivery.body,
                content_type=delivery.content_type,
                origin_delivery_id=delivery.id,
            )
        item.raw = placed(blobs, item.raw)
        return item

    async def close(self) -> None:
        return None


def _hops(source: str | None) -> int:
    """How many channel destinations in a row fed the message whose ``source`` this is."""
    fed = json.loads(source) if source else {}
    return int(fed.get("hops", 1)) if fed.get("protocol") == "channel" else 0
