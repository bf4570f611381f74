"""Destinations of a *local* kind (the DPS ``job``): no transport, applied to the store in
the transaction that writes the message's outcome, where one may refuse the message
(results for a finished job); the message is then settled with the refusal instead of
sending anything. The processor calls ``apply_local``; the kinds are given by the engine,
so that the core does not import what implements them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, NamedTuple

from sqlalchemy import Connection, update

from router.payload import Payload
from router.pipeline import CompiledChannel, Outcome
from router.store.database import savepoint
from router.store.schema import messages


class Refusal(NamedTuple):
    """A local destination's refusal: the message's outcome instead of its deliveries."""

    status: str  # ``filtered`` (a duplicate, of ``duplicate_of`` when known) or ``error``
    reason: str
    duplicate_of: int | None = None


# Applies a delivery's payload for message ``id`` in the processing transaction.
Apply = Callable[[Connection, bytes, int], Refusal | None]


class Local(NamedTuple):
    """A local kind: ``apply`` a payload; ``lock_key`` names what applying it locks (a DPS
    job's row), so that every transaction takes those locks in one order (``in_lock_order``):
    in the batch's order, two batches (or a batch and a round of settled deliveries, which
    lock jobs in their order) could each hold a row the other waits for."""

    apply: Apply
    lock_key: Callable[[bytes], str]


# Per channel, its destinations of a local kind.
LocalRoutes = dict[str, dict[str, Local]]


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def local_routes(channels: dict[str, CompiledChannel], kinds: dict[str, Local]) -> LocalRoutes:
    found = {
        name: {r.name: kinds[r.config.kind] for r in c.routes if r.config.kind in kinds}
        for name, c in channels.items()
    }
    return {name: routes for name, routes in found.items() if routes}


def in_lock_order(todo: list[tuple[Any, Outcome]], local: LocalRoutes) -> list[tuple[Any, Outcome]]:
    """The processed messages ``todo`` (row, outcome) of channels with local destinations,
    in the order of what applying them locks, then in the batch's order (the first of two
    answers to one job is applied first)."""

    def key(item: tuple[Any, Outcome]) -> tuple[list[str], int]:
        row, outcome = item
        routes = local[row.channel]
        keys = [
            routes[d.destination].lock_key(_data(d.payload))
            for d in outcome.deliveries
            if d.destination in routes
        ]
        return sorted(keys), row.id

    return sorted(todo, key=key)


def apply_local(
    conn: Connection, message_id: int, outcome: Outcome, routes: dict[str, Local]
) -> None:
    """Apply the outcome's local deliveries (marked applied), or, when one refuses, none of
    them: the message is then settled with the refusal and sends nothing."""
    try:
        with savepoint(conn, "tie_local"):
            for planned in outcome.deliveries:
                route = routes.get(planned.destination)
                refusal = route and route.apply(conn, _data(planned.payload), message_id)
                if refusal:
                    raise _Refused(refusal)
    except _Refused as refused:
        status, reason, original = refused.refusal
        conn.execute(
            update(messages)
            .where(messages.c.id == message_id)
            .values(status=status, error=reason[:2000], duplicate_of=original)
        )
        outcome.status, outcome.reason, outcome.deliveries = status, reason, []
        return
    outcome.deliveries = [
        replace(d, applied=True) if d.destination in routes else d for d in outcome.deliveries
    ]


def _data(payload: bytes | Payload) -> bytes:
    return payload if isinstance(payload, bytes) else payload.read()
