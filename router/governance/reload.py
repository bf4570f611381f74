"""Deploying changed channels into the running engine, without a restart.

Only what changed is touched. A changed channel gets a newly compiled pipeline (the
processor takes it from its next batch); a destination whose settings changed gets a
new dispatch worker once the old one has finished the round in hand, so in-flight
deliveries complete and are recorded as before; a listener or MESH schedule restarts
only when its source changed. Durability is unchanged: messages are stored before they
are acknowledged whatever the reload does, and queued deliveries stay in the store.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from router.config import ChannelConfig
from router.connectors.file_source import file_schedule
from router.connectors.mesh.build import mesh_schedule
from router.connectors.mllp.listener import ListenError, MllpListener
from router.pipeline import CompiledChannel

if TYPE_CHECKING:
    from router.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class ReloadResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    # Governed mode: the revisions a reload proposed instead, as "channel#number".
    proposed: list[str] = field(default_factory=list)

    @property
    def touched(self) -> list[str]:
        return sorted(self.added + self.changed + self.removed)


class Reloader:
    """Applies a new set of channel configurations to a started engine, one reload at a time."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = asyncio.Lock()

    async def apply(
        self,
        wanted: dict[str, ChannelConfig],
        revisions: dict[str, int] | None = None,
        code: dict[str, str | None] | None = None,
    ) -> ReloadResult:
        """Make the engine run ``wanted`` (channels not named keep running as they are;
        a channel named with ``enabled: false`` stops), each as the revision ``revisions``
        gives it: an unchanged channel takes its new number too (a rollback to the same
        text), so a message records the revision that settled it. A channel whose
        configuration is unchanged but whose mapping code digest ``code`` gives differs
        from what it loaded is compiled again (a change of the mapping code alone). A
        ConfigError leaves all as it was."""
        from router.engine import compile_channels, numbered

        engine = self._engine
        async with self._lock:
            current = {name: c.config for name, c in engine.channels.items()}
            result = ReloadResult()
            fresh: dict[str, ChannelConfig] = {}
            for name, config in wanted.items():
                if not config.enabled:
                    if name in current:
                        result.removed.append(name)
                elif name not in current:
                    result.added.append(name)
                    fresh[name] = config
                elif config != current[name] or (
                    code is not None
                    and name in code
                    and code[name] != engine.channels[name].mappings_sha256
                ):
                    result.changed.append(name)
                    fresh[name] = config
            revisions = revisions or {}
            renumbered = {
                name: c
                for name, c in engine.channels.items()
                if name in revisions and name not in fresh and c.revision != revisions[name]
            }
            if not result.touched:
                if renumbered:
                    engine.channels = {**engine.channels, **numbered(renumbered, revisions)}
                    engine.processor.use(engine.channels)
                return result
            compiled = engine.gateway.attach(
                await asyncio.to_thread(compile_channels, engine.config, fresh)
            )
            channels = {
                name: c for name, c in engine.channels.items() if name not in result.removed
            }
            channels.update(numbered({**renumbered, **compiled}, revisions))
            old = engine.channels
            engine.channels = channels
            engine.processor.use(channels)
            await engine.dispatcher.update(channels)
            await self._restart_sources(old, channels, result)
            log.info(
                "reloaded channels: added %s, changed %s, removed %s",
                result.added or "-",
                result.changed or "-",
                result.removed or "-",
            )
            return result

    async def _restart_sources(
        self,
        old: dict[str, CompiledChannel],
        new: dict[str, CompiledChannel],
        result: ReloadResult,
    ) -> None:
        engine = self._engine

        def source_of(channels: dict[str, CompiledChannel], name: str) -> object:
            c = channels.get(name)
            return None if c is None else (c.config.source, c.config.idempotent)

        moved = [n for n in result.touched if source_of(old, n) != source_of(new, n)]
        stopped: dict[str, ChannelConfig] = {}
        for listener in [x for x in engine.listeners if x.channel.name in moved]:
            await listener.stop()
            engine.listeners.remove(listener)
            stopped[listener.channel.name] = listener.channel
        for name in moved:
            channel = new.get(name)
            if channel is not None and channel.config.source.mllp is not None:
                engine.listeners.append(await self._listen(channel.config, stopped.get(name)))
        if any(c.get(n) and c[n].config.source.file for n in moved for c in (old, new)):
            await asyncio.to_thread(engine.files.stop)
            engine.files = file_schedule(
                [c.config for c in new.values()], engine.store, engine.writer.submit_sync
            )
            await asyncio.to_thread(engine.files.start)
        meshed = [
            n
            for n in moved
            if any(c.get(n) and c[n].config.source.mesh is not None for c in (old, new))
        ]
        if meshed:
            await asyncio.to_thread(engine.mesh.stop)
            engine.mesh = mesh_schedule(
                engine.config,
                [c.config for c in new.values()],
                engine.store,
                engine.writer.submit_sync,
                engine.deliveries_settled,
            )
            await asyncio.to_thread(engine.mesh.start)

    async def _listen(self, config: ChannelConfig, before: ChannelConfig | None) -> MllpListener:
        """A started listener for ``config``. When its address cannot be taken (another
        program holds the port), the channel goes on listening as ``before`` did rather
        than not at all; if that fails too, the unbound listener is returned, so that
        ``/health`` reports it down instead of the channel silently refusing connections."""
        listener = MllpListener(config, self._engine.writer.submit)
        try:
            await listener.start()
        except ListenError as exc:
            if before is None or before.source.mllp is None:
                log.error("%s; the channel is not listening", exc.strerror)
                return listener
            previous = before.source.mllp
            log.error(
                "%s; it goes on listening on %s:%d",
                exc.strerror,
                previous.host,
                previous.port,
            )
            restored = MllpListener(before, self._engine.writer.submit)
            try:
                await restored.start()
            except ListenError as again:
                log.error("%s; the channel is not listening", again.strerror)
                return listener
            return restored
        return listener


async def reload_files(engine: Engine, actor: str) -> ReloadResult:
    """Re-read the channel files. Open mode: record the changed ones as deployed revisions
    by ``actor`` and apply them now. Governed mode: propose them as revisions by ``actor``
    (who needs the engineer role; SIGHUP, having no person, only re-checks approvals, and
    tries again the revisions that could not run)."""
    from router.governance.deploy import record_reload
    from router.governance.files import propose_files

    config, store = engine.config, engine.store
    if config.governance == "governed":
        if actor == "sighup":
            engine.watcher.retry()
            await engine.watcher.check()
            return ReloadResult()
        proposed = await asyncio.to_thread(propose_files, store, config, actor=actor)
        return ReloadResult(proposed=[f"{r.channel}#{r.number}" for r in proposed])
    async with engine.watcher.lock:
        await asyncio.to_thread(record_reload, store, config, actor=actor)
        return await engine.watcher.check()
