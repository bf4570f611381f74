"""The engine's HTTP side beyond plain destinations: the endpoint directory kept fresh,
the FHIR sources' intake, BaRS routing and the booking proxy.

The engine makes one ``Gateway``. It reads ``endpoints.yaml`` when it is made (a broken
file stops the engine before it starts), seeds the directory from it on start, and
refreshes the directory's snapshot every few seconds, so that changes made by ``run.py
endpoints`` (another process) or another node reach lookups, and checks again any FHIR
message left ``validating`` (router.fhir.recovery). FHIR bodies are parsed on a small pool
of threads of its own, off the event loop, and their models validated in worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from router.config import EngineConfig
from router.directory import Directory
from router.directory.seeding import read_endpoints, seed_endpoints
from router.fhir.exchange import fail_interrupted
from router.fhir.forwarding import Forwarder
from router.fhir.intake import FhirIntake
from router.fhir.proxy import BookingProxy
from router.fhir.recorder import Recorder
from router.fhir.recovery import GRACE, recover, stranded
from router.fhir.routing import BarsRouter
from router.fhir.senders import Senders, senders_not_ready, unprovided
from router.fhir.validators import ValidationWorkers
from router.outage_log import OutageLog
from router.pipeline import CompiledChannel
from router.store.database import Store
from router.store.inbound import Inbound
from router.store.ingest import GroupCommitWriter

log = logging.getLogger(__name__)
REFRESH_SECONDS = 2.0


class Gateway:
    def __init__(
        self,
        config: EngineConfig,
        store: Store,
        writer: GroupCommitWriter,
        channels: Callable[[], dict[str, CompiledChannel]],
    ) -> None:
        self.config = config
        self.store = store
        self.writer = writer
        self.directory = Directory(store)
        self._seed = read_endpoints(config.endpoints)
        self.executor = ThreadPoolExecutor(min(4, os.cpu_count() or 1), "tie-fhir")
        self.recorder = Recorder(writer)
        self.forwarder = Forwarder()
        self.bars = BarsRouter(
            store, writer, self.recorder, self.directory, self.forwarder, config.node
        )
        self.validators = ValidationWorkers(config.fhir.validation_workers)
        self.intake = FhirIntake(
            writer.submit, self.executor, self.validators, writer.release, self.bars.route
        )
        self.proxy = BookingProxy(
            self.recorder, self.directory, self.forwarder, config.node, store.blobs
        )
        self.senders = Senders(store)
        self._refresher: asyncio.Task[None] | None = None
        self._channels = channels

    def attach(self, channels: dict[str, CompiledChannel]) -> dict[str, CompiledChannel]:
        """The channels with the directory as their destinations' resolver."""
        return {
            name: dataclasses.replace(channel, resolve=self.directory.addresses)
            for name, channel in channels.items()
        }

    async def start(self) -> None:
        """Seed and load the directory, fail exchanges a stop interrupted; call after the schema
        is upgraded and before the dispatcher takes back this node's leases."""
        interrupted = await asyncio.to_thread(fail_interrupted, self.store, self.config.node)
        if interrupted:
            log.warning("%d synchronous exchange(s) were interrupted by a stop", interrupted)
        if self._seed is not None:
            await asyncio.to_thread(seed_endpoints, self.store, self.config.endpoints, self._seed)
        await asyncio.to_thread(self.directory.refresh)
        warning = await asyncio.to_thread(unprovided, self.store, self._channels().values())
        if warning:
            log.warning(warning)
        channels = list(self._channels().values())
        for problem in await asyncio.to_thread(senders_not_ready, self.store, channels):
            log.warning(problem)
        if any(c.config.source.http is not None for c in self._channels().values()):
            await self.validators.start()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="directory refresh")

    async def stop(self) -> None:
        await self.forwarder.close()
        await self.recorder.written()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.validators.stop()
        self.executor.shutdown(wait=True)

    async def _refresh_forever(self) -> None:
        refreshes = OutageLog(log, "endpoint directory refresh")
        rechecks = OutageLog(log, "checking messages left validating")
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            try:
                await asyncio.to_thread(self.directory.refresh)
                refreshes.succeeded()
            except Exception as exc:
                refreshes.failed(exc)
            try:
                await self.recover_validating()
                rechecks.succeeded()
            except Exception as exc:
                rechecks.failed(exc)

    async def recover_validating(self, grace: float = GRACE) -> int:
        """Check again and release messages left ``validating`` for over ``grace`` seconds."""
        rows = await asyncio.to_thread(stranded, self.store, grace)
        if not rows:
            return 0
        return await recover(rows, self._channels(), self.intake.verify, self._release)

    def _release(self, item: Inbound, reason: str | None) -> Future[bool]:
        """A recovered message's release: a BaRS exchange's by its router (which indexes its
        ServiceRequests), any other's by the writer (which routes it)."""
        if (item.source or {}).get("bars") is not None:
            return self.bars.release(item, reason)
        return self.writer.release(item, reason)
