"""The MLLP destination: a persistent connection that reconnects, and reads the receiver's ACK."""

from __future__ import annotations

import asyncio
import contextlib

from router.config import MllpTarget
from router.connectors import Delivery, SendResult
from router.connectors.mllp.framing import FrameTooLarge, TruncatedFrame, frame, read_frame
from router.hl7v2.ack import parse_ack
from router.hl7v2.er7 import Er7Error

MAX_ACK = 1024 * 1024


class MllpSender:
    """Sends one delivery at a time on one connection; any doubt closes the connection."""

    def __init__(self, target: MllpTarget) -> None:
        self._target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, delivery: Delivery) -> SendResult:
        target = self._target
        try:
            if self._reader is not None and self._reader.at_eof():
                await self.close()  # the receiver hung up while we were idle: not a failure
            if self._writer is None or self._writer.is_closing():
                async with asyncio.timeout(target.connect_timeout):
                    self._reader, self._writer = await asyncio.open_connection(
                        target.host, target.port, limit=MAX_ACK + 2
                    )
            assert self._reader is not None and self._writer is not None
            self._writer.write(frame(delivery.body.read()))
            await self._writer.drain()
            async with asyncio.timeout(target.ack_timeout):
                answer = await read_frame(self._reader, MAX_ACK)
        except TimeoutError:
            await self.close()
            return SendResult("retry", error=f"no ACK from {target.host}:{target.port} in time")
        except (OSError, FrameTooLarge, TruncatedFrame) as exc:
            await self.close()
            return SendResult("retry", error=f"{target.host}:{target.port}: {exc}")
        if answer is None:
            await self.close()
            return SendResult("retry", error=f"{target.host}:{target.port} closed without an ACK")
        return await self._judge(answer, delivery)

    async def _judge(self, answer: bytes, delivery: Delivery) -> SendResult:
        try:
            ack = parse_ack(answer)
        except Er7Error as exc:
            await self.close()
            return SendResult("retry", answer, f"unreadable ACK: {exc}")
        if delivery.idempotency_key and ack.control_id != delivery.idempotency_key:
            await self.close()  # the conversation is out of step: start afresh
            return SendResult(
                "retry",
                answer,
                f"ACK is for {ack.control_id!r}, not {delivery.idempotency_key!r}",
            )
        action = self._target.on_ack.get(ack.code, "retry")
        if action == "sent":
            return SendResult("sent", answer)
        detail = "; ".join(x for x in (ack.text, ack.error) if x)
        return SendResult(action, answer, f"{ack.code}{': ' + detail if detail else ''}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._reader = self._writer = None
