"""The engine's side of deploying: it runs each channel's newest approved revision.

Approvals and open-mode reloads are written to the store, by this process or another
(``run.py channel approve``, ``run.py reload``, another node). The watcher reads the
running revisions every few seconds (or at once when woken), applies the channels whose
text changed through the reloader, and marks approved revisions ``deployed``, or
``deploy-failed`` when they cannot be compiled.

In open mode the channel files are the truth and the store only carries the news of a
reload: a revision is applied only when its text is this node's own file's. Another
node sharing the store with other files records those at its start; running them here
would silently swap this node's channels for that node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from router.config import ConfigError, channel_file
from router.governance.deploy import (
    RunningText,
    mark_deployed,
    mark_failed,
    runnable,
    running_texts,
)
from router.governance.models import APPROVED
from router.governance.reload import ReloadResult
from router.governance.revisions import sha256
from router.outage_log import OutageLog

if TYPE_CHECKING:
    from router.engine import Engine

log = logging.getLogger(__name__)
INTERVAL = 2.0


class RevisionWatcher:
    def __init__(self, engine: Engine, interval: float = INTERVAL) -> None:
        self._engine = engine
        self.interval = interval
        self._applied: dict[str, str] = {}  # channel -> sha256 of the text it runs
        self._foreign: dict[str, str] = {}  # open mode: the text not applied, warned once
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Held by a reload from recording its files to checking them, so that this
        # watcher's own check cannot apply the change in between (and the reload then
        # report that nothing changed).
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        await self.check()
        self._task = asyncio.create_task(self._run(), name="revision watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """Check now (after an approval or a reload in this process); thread-safe."""
        loop = self._task.get_loop() if self._task is not None else None
        if loop is not None:
            loop.call_soon_threadsafe(self._wake.set)

    async def check(self) -> ReloadResult:
        """Apply every running revision whose text this engine does not run yet; an approved
        one that cannot be compiled is marked ``deploy-failed`` instead, the others applied."""
        texts = await asyncio.to_thread(running_texts, self._engine.store)
        fresh = {n: t for n, t in texts.items() if self._applied.get(n) != t.sha256}
        if fresh and self._engine.config.governance != "governed":
            fresh = await asyncio.to_thread(self._own_files, fresh)
        if not fresh:
            return ReloadResult()
        # Remembered even when it fails, so that a broken revision is reported once, not
        # every few seconds; the next approved revision is tried afresh.
        self._applied.update({n: t.sha256 for n, t in fresh.items()})
        config, actor = self._engine.config, f"engine@{self._engine.config.node}"
        wanted = {}
        for name, text in fresh.items():
            try:
                wanted[name] = await asyncio.to_thread(runnable, config, name, text.yaml)
            except ConfigError as exc:
                await asyncio.to_thread(self._failed, text, exc, actor)
        try:
            numbers = {name: fresh[name].number for name in wanted}
            result = await self._engine.reloader.apply(wanted, numbers)
        except ConfigError as exc:
            log.error("cannot deploy channel revision(s); keeping the running ones:\n%s", exc)
            return ReloadResult()
        for name in wanted:
            if fresh[name].state == APPROVED:
                await asyncio.to_thread(
                    mark_deployed, self._engine.store, name, fresh[name].number, actor=actor
                )
        return result

    def _own_files(self, fresh: dict[str, RunningText]) -> dict[str, RunningText]:
        """Open mode: the texts that are this node's channel files as they are now. The
        others are left unapplied (and not remembered as applied, so that they apply once
        the file says the same); each is logged once."""
        folder = self._engine.config.channels
        own = {}
        for name, text in fresh.items():
            path = channel_file(folder, name)
            try:
                mine = sha256(path.read_text(encoding="utf-8"))
            except OSError:
                mine = None
            if mine == text.sha256:
                own[name] = text
                self._foreign.pop(name, None)
            elif self._foreign.get(name) != text.sha256:
                self._foreign[name] = text.sha256
                log.warning(
                    "channel %s: revision #%d in the store differs from %s, which this node "
                    "runs in open mode; not applying it (does another node share the store "
                    "with other channel files?)",
                    name,
                    text.number,
                    path,
                )
        return own

    def _failed(self, text: RunningText, problem: ConfigError, actor: str) -> None:
        log.error(
            "cannot deploy channel %s revision #%d; it keeps running what it ran:\n%s",
            text.channel,
            text.number,
            problem,
        )
        if text.state == APPROVED:
            mark_failed(
                self._engine.store, text.channel, text.number, actor=actor, reason=str(problem)
            )

    async def _run(self) -> None:
        checks = OutageLog(log, "checking channel revisions")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                async with self.lock:
                    await self.check()
                checks.succeeded()
            except Exception as exc:
                checks.failed(exc)
