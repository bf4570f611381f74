"""``/metrics``: the Prometheus exposition, for a scraper holding a token with the viewer role.

Scrape with ``authorization: {credentials: <token>}`` (Prometheus' bearer token);
the token comes from ``run.py users token <scraper> --role viewer``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router import metrics
from router.api.security import Principal, require_role

if TYPE_CHECKING:
    from router.engine import Engine


class _Scrape:
    """This process's counters and the store's queue gauges, as one exposition."""

    def __init__(self, queues: metrics.QueueCollector) -> None:
        self.queues = queues

    def collect(self) -> Iterator[Any]:
        return itertools.chain(metrics.REGISTRY.collect(), self.queues.collect())


def metrics_routes(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["operations"])
    scrape = _Scrape(metrics.QueueCollector(engine.store))

    @router.get("/metrics", response_class=Response)
    async def exposition(_: Principal = Depends(require_role("viewer"))) -> Response:
        body = await asyncio.to_thread(generate_latest, scrape)  # type: ignore[arg-type]
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
