"""The channel destination: a delivery becomes a new message of another channel.

The new message records the delivery it came from, so a retried delivery never
feeds the same message twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import select

from router.config import ChannelTarget
from router.connectors import Delivery, SendResult
from router.connectors.hl7_inbound import hl7_inbound
from router.store.database import Store
from router.store.inbound import Inbound, write_inbound
from router.store.schema import messages


class ChannelSender:
    def __init__(
        self, target: ChannelTarget, store: Store, on_commit: Callable[[], None] | None = None
    ) -> None:
        self._target = target
        self._store = store
        self._on_commit = on_commit

    async def send(self, delivery: Delivery) -> SendResult:
        uuid = await asyncio.to_thread(self._feed, delivery)
        if self._on_commit is not None:
            self._on_commit()
        return SendResult("sent", response=f"urn:tie:message:{uuid}".encode())

    def _feed(self, delivery: Delivery) -> str:
        with self._store.begin() as conn:
            existing = conn.scalar(
                select(messages.c.uuid).where(messages.c.origin_delivery_id == delivery.id)
            )
            if existing is not None:
                return existing
            source = {
                "protocol": "channel",
                "channel": delivery.channel,
                "message": delivery.message_uuid,
                "delivery": delivery.id,
            }
            if delivery.content_type == "hl7v2":
                item = hl7_inbound(
                    self._target.channel,
                    delivery.body.read(),
                    source=source,
                    origin_delivery_id=delivery.id,
                )
            else:
                item = Inbound(
                    self._target.channel,
                    delivery.body,
                    content_type=delivery.content_type,
                    source=source,
                    origin_delivery_id=delivery.id,
                )
            return write_inbound(conn, [item])[0].uuid

    async def close(self) -> None:
        return None
