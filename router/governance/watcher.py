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
the approved code is back. A deployed revision that may not or cannot run here follows the
start's walk-back rules (router/governance/deploy.py): a channel keeps the approved revision
it loaded (a fallback when that is older than the newest), and one not running starts from
the newest earlier deployed revision that may and can run, else stays left out; each is
logged, audited (``revision.fallback``, ``revision.left-out``) and in ``/health``. A running
channel whose loaded or on-disk mapping code is not its revision's is logged as a warning,
once per difference; one whose approved code is gone from disk (a restart would not start
it as it runs) is audited as ``revision.code-differs`` and ``/health`` says it is not
``restartable``.

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

from router.config import ChannelConfig, ConfigError, channel_file
from router.governance import fallback, mapping_code
from router.governance.deploy import (
    RunningText,
    Start,
    asks_to_run,
    mark_deployed,
    mark_failed,
    parsed,
    runnable,
    running_texts,
    walk_back,
)
from router.governance.deploy_checks import lapsed_approval, unapproved_code
from router.governance.fallback import Fallback, engine_actor
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
        # channel -> the newest text that cannot run here, with the mappings folder's state
        # then: not compiled (nor said) again until either changes (``retry`` forgets them)
        self._unrunnable: dict[str, tuple[tuple[str, str | None], str]] = {}
        self._foreign: dict[str, str] = {}  # open mode: the text not applied, warned once
        self._code_warned: dict[str, tuple[str | None, str | None]] = {}
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

    def retry(self) -> None:
        """Try the revisions that could not run again at the next check, as after a change
        the watcher cannot see (a package installed, a certificate renewed): SIGHUP."""
        self._unrunnable.clear()

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
        # The mappings folder is looked at only while a text is new or could not run.
        folder = ""
        if fresh:
            mappings = self._engine.config.mappings
            folder = await asyncio.to_thread(mapping_code.folder_state, mappings)
            fresh = {
                n: t for n, t in fresh.items() if self._unrunnable.get(n) != (_applied(t), folder)
            }
        if fresh and not governed:
            fresh = await asyncio.to_thread(self._own_files, fresh)
        if not fresh:
            if governed:
                await asyncio.to_thread(self._warn_unapproved_code, texts)
            return ReloadResult()
        # A text that cannot run is remembered with the mapping folder's state, so that it is
        # compiled and reported once, not every few seconds, and tried again when its code
        # (or a newer revision) arrives.
        self._applied.update({n: _applied(t) for n, t in fresh.items()})
        for name in fresh:
            self._unrunnable.pop(name, None)
        config, actor = self._engine.config, engine_actor(self._engine.config.node)
        wanted: dict[str, ChannelConfig] = {}
        numbers: dict[str, int] = {}
        code: dict[str, str | None] = {}
        older: dict[str, Fallback] = {}  # started from an older revision than the newest
        for name, text in fresh.items():
            refused: ConfigError | str = ""
            try:
                if governed:
                    refused = await asyncio.to_thread(self._may_not_run, text)
                if not refused:
                    wanted[name] = await asyncio.to_thread(runnable, config, name, text.yaml)
                    numbers[name], code[name] = text.number, text.mappings_sha256
                    continue
            except ConfigError as exc:
                refused = exc
            if text.state == APPROVED or not governed:
                await asyncio.to_thread(self._failed, text, refused, actor)
                self._cannot_run(text, folder)
                continue
            start = await asyncio.to_thread(self._pass_over, text, str(refused), folder)
            if start is not None and start.channel is not None and start.number is not None:
                wanted[name], numbers[name], code[name] = start.channel, start.number, start.code
                older[name] = Fallback(start.number, text.number, start.why(text.number))
        for name, now in older.items():  # in /health as soon as the channel runs
            await asyncio.to_thread(self._fell_back, name, now)
        try:
            result = await self._engine.reloader.apply(
                wanted, numbers, {n: c for n, c in code.items() if c}
            )
        except ConfigError as exc:
            log.error("cannot deploy channel revision(s); keeping the running ones:\n%s", exc)
            for name in older:
                self._engine.fallbacks.pop(name, None)
            for name in wanted:
                self._cannot_run(fresh[name], folder)
            return ReloadResult()
        for name in wanted:
            self._engine.left_out.pop(name, None)
            if name in older:
                continue
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

    def _cannot_run(self, text: RunningText, folder: str) -> None:
        """Not to be tried again until ``text`` or the mappings folder (``folder``) changes."""
        self._applied.pop(text.channel, None)
        self._unrunnable[text.channel] = (_applied(text), folder)

    def _pass_over(self, text: RunningText, why: str, folder: str) -> Start | None:
        """Governed: the newest deployed revision ``text`` may not or cannot run on this
        node (another node deployed it, or this one started without it), by the start's
        rules: a channel running already keeps the approved revision it loaded (a fallback
        when that is older); one not running walks back to the newest earlier deployed
        revision that may and can run, returned to be started, else it stays left out.
        Looked at again once the mappings folder changes (``folder``: its state now), so
        that restoring the approved code starts it."""
        engine, name = self._engine, text.channel
        running = engine.channels.get(name)
        if running is not None and running.revision == text.number:
            # It runs already, on the code it loaded: _warn_unapproved_code says so.
            return None
        self._cannot_run(text, folder)
        if running is not None:
            if running.revision is not None:
                reason = f"revision #{text.number} cannot run: {why}"
                self._fell_back(name, Fallback(running.revision, text.number, reason))
            return None
        if not asks_to_run(engine.config, name, text.yaml):
            return None
        start = walk_back(engine.store, engine.config, name, text)
        if start.channel is not None:
            return start
        left = f"revision #{text.number} cannot run: {start.problems[0]}"
        if engine.left_out.get(name) != left:  # else said already (by the start)
            engine.left_out[name] = left
            log.error(
                "channel %s: revision #%d cannot run; the channel is left out:\n%s",
                name,
                text.number,
                "\n".join(start.problems),
            )
            fallback.record(
                engine.store, engine.config.node, name, text.number, None, start.why(text.number)
            )
        return None

    def _fell_back(self, name: str, now: Fallback) -> None:
        """``name`` runs ``now.running``, not its newest revision: logged and audited once
        per pair of revisions (the start has already done so for its own)."""
        engine = self._engine
        known = engine.fallbacks.get(name)
        if known is None or (known.running, known.newest) != (now.running, now.newest):
            log.error(
                "channel %s: revision #%d cannot run; it runs revision #%d instead:\n%s",
                name,
                now.newest,
                now.running,
                now.reason,
            )
            fallback.record(
                engine.store, engine.config.node, name, now.newest, now.running, now.reason
            )
        engine.fallbacks[name] = now  # shown once audited

    def _warn_unapproved_code(self, texts: dict[str, RunningText]) -> None:
        """Governed: log, once per difference, a running channel whose loaded mapping code,
        or whose mapping code on disk (which a restart would load), is not its revision's;
        the latter is audited and not ``restartable`` in ``/health`` until the code is back."""
        folder = self._engine.config.mappings
        for name, compiled in list(self._engine.channels.items()):
            text = texts.get(name)
            if text is None or text.mappings_sha256 is None or compiled.revision != text.number:
                self._engine.not_restartable.pop(name, None)
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
            if disk == approved:
                self._engine.not_restartable.pop(name, None)
            else:
                why = unapproved_code(self._engine.config, compiled.config, approved)
                fallback.record_code_differs(
                    self._engine.store, self._engine.config.node, name, text.number, why
                )
                self._engine.not_restartable[name] = why  # shown once audited
            if compiled.mappings_sha256 == approved and disk != approved:
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
