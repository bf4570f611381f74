"""The engine's side of deploying: it runs each channel's newest approved revision.

Approvals and open-mode reloads are written to the store, by this process or another
(``run.py channel approve``, ``run.py reload``, another node). The watcher reads the
running revisions every few seconds (or at once when woken), applies the channels whose
text changed through the reloader, and marks approved revisions ``deployed``, or
``deploy-failed`` when they cannot be compiled.

In governed mode only approved code runs (router/governance/deploy_checks.py): an approved
revision whose approver lost the role, or whose mapping code on disk differs from what was
approved, is not deployed (``deploy-failed``); a deployed one this engine does not run yet
(it started without it) is not applied while its code on disk differs, and is applied once
the approved code is back. A running channel whose loaded or on-disk mapping code is not
its revision's is logged as a warning, once per difference.

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
from router.governance import mapping_code
from router.governance.deploy import (
    RunningText,
    asks_to_run,
    mark_deployed,
    mark_failed,
    parsed,
    runnable,
    running_texts,
)
from router.governance.deploy_checks import lapsed_approval, unapproved_code
from router.governance.fallback import engine_actor
from router.governance.mapping_code import short
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
        # channel -> sha256 of the text it runs and of its mapping code
        self._applied: dict[str, tuple[str, str | None]] = {}
        self._foreign: dict[str, str] = {}  # open mode: the text not applied, warned once
        self._code_warned: dict[str, tuple[str | None, str | None]] = {}
        self._refused: dict[str, str] = {}  # governed: a deployed revision not run, logged once
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
        one that cannot be compiled, or may not run (governed: its approval lapsed, its code
        on disk is not the approved code), is marked ``deploy-failed`` instead, the others
        applied."""
        texts = await asyncio.to_thread(running_texts, self._engine.store)
        governed = self._engine.config.governance == "governed"
        fresh = {n: t for n, t in texts.items() if self._applied.get(n) != _applied(t)}
        if fresh and not governed:
            fresh = await asyncio.to_thread(self._own_files, fresh)
        if not fresh:
            if governed:
                await asyncio.to_thread(self._warn_unapproved_code, texts)
            return ReloadResult()
        # Remembered even when it fails, so that a broken revision is reported once, not
        # every few seconds; the next approved revision is tried afresh.
        self._applied.update({n: _applied(t) for n, t in fresh.items()})
        config, actor = self._engine.config, engine_actor(self._engine.config.node)
        wanted = {}
        for name, text in fresh.items():
            try:
                refused = governed and await asyncio.to_thread(self._may_not_run, text)
                if not refused:
                    wanted[name] = await asyncio.to_thread(runnable, config, name, text.yaml)
                    self._refused.pop(name, None)
            except ConfigError as exc:
                await asyncio.to_thread(self._failed, text, exc, actor)
                continue
            if refused and text.state == APPROVED:
                await asyncio.to_thread(self._failed, text, refused, actor)
            elif refused:
                self._refuse_deployed(text, refused)
        try:
            numbers = {name: fresh[name].number for name in wanted}
            code = {n: fresh[n].mappings_sha256 for n in wanted if fresh[n].mappings_sha256}
            result = await self._engine.reloader.apply(wanted, numbers, code)
        except ConfigError as exc:
            log.error("cannot deploy channel revision(s); keeping the running ones:\n%s", exc)
            return ReloadResult()
        for name in wanted:
            self._engine.fallbacks.pop(name, None)  # it runs its newest revision now
            if fresh[name].state == APPROVED:
                await asyncio.to_thread(
                    mark_deployed, self._engine.store, name, fresh[name].number, actor=actor
                )
        if governed:
            await asyncio.to_thread(self._warn_unapproved_code, texts)
        return result

    def _may_not_run(self, text: RunningText) -> str:
        """Why ``text`` must not run (empty when it may): an approval that lapsed before it
        deployed, or mapping code on disk that is not the code approved with it. Checked
        before compiling, so that unapproved code is not even imported."""
        config = self._engine.config
        return lapsed_approval(self._engine.store, text.state, text.approver) or unapproved_code(
            config, parsed(config, text.channel, text.yaml), text.mappings_sha256
        )

    def _refuse_deployed(self, text: RunningText, why: str) -> None:
        """A deployed revision this engine does not run yet (it started without it) whose
        code on disk is not its approved code: not applied, logged once per difference, and
        looked at again next round, so that restoring the approved code starts it. One this
        engine runs already (its code changed on disk since) runs on what it loaded, and
        ``_warn_unapproved_code`` says so."""
        running = self._engine.channels.get(text.channel)
        if running is not None and running.revision == text.number:
            return
        self._applied.pop(text.channel, None)
        if running is None and asks_to_run(self._engine.config, text.channel, text.yaml):
            self._engine.left_out[text.channel] = f"revision #{text.number} may not run: {why}"
        if self._refused.get(text.channel) == why:
            return
        self._refused[text.channel] = why
        log.error(
            "channel %s: revision #%d may not run, so this engine does not run it: %s",
            text.channel,
            text.number,
            why,
        )

    def _warn_unapproved_code(self, texts: dict[str, RunningText]) -> None:
        """Governed: log, once per difference, a running channel whose loaded mapping code,
        or whose mapping code on disk (which a restart would load), is not its revision's."""
        folder = self._engine.config.mappings
        for name, compiled in list(self._engine.channels.items()):
            text = texts.get(name)
            if text is None or text.mappings_sha256 is None or compiled.revision != text.number:
                continue
            disk = mapping_code.digest(mapping_code.sources(folder, compiled.config))
            seen = (compiled.mappings_sha256, disk)
            if self._code_warned.get(name) == seen:
                continue
            self._code_warned[name] = seen
            approved = text.mappings_sha256
            if compiled.mappings_sha256 != approved:
                log.warning(
                    "channel %s runs mapping code (sha256 %s) that is not the code approved "
                    "with revision #%d (%s)",
                    name,
                    short(compiled.mappings_sha256),
                    text.number,
                    short(approved),
                )
            elif disk != approved:
                log.warning(
                    "channel %s: the mapping code under %s (sha256 %s) differs from the code "
                    "approved with revision #%d (%s), which runs; a restart would not start the "
                    "channel on it: propose it (run.py channel propose %s) or restore the "
                    "approved code",
                    name,
                    folder,
                    short(disk),
                    text.number,
                    short(approved),
                    name,
                )

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

    def _failed(self, text: RunningText, problem: ConfigError | str, actor: str) -> None:
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


def _applied(text: RunningText) -> tuple[str, str | None]:
    return text.sha256, text.mappings_sha256
