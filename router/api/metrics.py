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
from prometheus_client.registry import Collector

from router import metrics
from router.api.security import Principal, require_role
from router.channel_health import channel_health

if TYPE_CHECKING:
    from router.engine import Engine


class _Scrape:
    """This process's counters, the store's queue gauges, the channels' state and the
    certificates' expiry, as one exposition."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Any]:
        parts = (c.collect() for c in self.collectors)
        return itertools.chain(metrics.REGISTRY.collect(), *parts)


def metrics_routes(engine: Engine) -> APIRouter:
    router = APIRouter(tags=["operations"])
    certificates = metrics.CertificateCollector(
        engine.presented_certificates, engine.trusted_bundles, engine.served_crls
    )
    list(certificates.collect())  # read at load: a scrape then only stats the files
    queues = metrics.QueueCollector(engine.store, engine.config.dps.overdue_after)
    channels = metrics.ChannelCollector(lambda: channel_health(engine))
    scrape = _Scrape(queues, channels, certificates)

    @router.get("/metrics", response_class=Response)
    async def exposition(_: Principal = Depends(require_role("viewer"))) -> Response:
        body = await asyncio.to_thread(generate_latest, scrape)  # type: ignore[arg-type]
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router
