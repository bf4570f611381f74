"""``/api/conversations/{key}``: every message of a conversation, found by any of its keys.

BaRS messages routed by tie join a conversation (correlation key ``conversation``)
when they share a Bundle id, a ServiceRequest or Appointment, or an external URN with
an earlier message; a search by any one key value finds all of it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends

from router.api.security import Principal, require_role
from router.fhir.exchange import conversation_messages

if TYPE_CHECKING:
    from router.engine import Engine


def conversations_router(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/api/conversations", tags=["messages"])

    @router.get("/{value:path}")
    async def conversation(
        value: str, _: Principal = Depends(require_role("viewer"))
    ) -> dict[str, Any]:
        """Messages that have ``value`` as a correlation key (or MSH-10 / Bundle.id), and every
        message of their conversations, oldest first."""

        def find() -> list[dict[str, Any]]:
            with engine.store.read() as conn:
                return conversation_messages(conn, value)

        rows = await asyncio.to_thread(find)
        return {
            "key": value,
            "messages": [
                {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
                for row in rows
            ],
        }

    return router
