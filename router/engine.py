"""The running engine: store, group-commit writer, processor, dispatcher, listeners and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import uvicorn
from sqlalchemy import Connection, select

from router import mappings
from router.ca_expiry import log_trust_running_out, revocation_lists, trusted_bundles
from router.certificate_expiry import Presented, log_expiring, presented_certificates
from router.config import (
    ChannelConfig,
    ConfigError,
    ConfigProblem,
    DestinationConfig,
    EngineConfig,
    channel_file,
    http_port_clashes,
)
from router.connectors import Sender
from router.connectors.addressed import BOUND, AddressedSender, with_address
from router.connectors.channel import ChannelSender
from router.connectors.file import FileSender
from router.connectors.file_source import file_schedule
from router.connectors.http import HttpSender
from router.connectors.mesh.build import check_mailboxes, mesh_schedule, mesh_sender
from router.connectors.mllp.listener import ListenError, MllpListener
from router.connectors.mllp.sender import MllpSender
from router.connectors.mllp.tls import channel_tls_problems
from router.connectors.smtp import SmtpSender
from router.dispatch import Dispatcher
from router.dps import jobs
from router.dps.jobs import JobSender
from router.gateway import Gateway
from router.governance import mapping_code
from router.governance.deploy import revision_numbers, startup_channels
from router.governance.fallback import Fallback
from router.governance.reload import Reloader, ReloadResult, reload_files
from router.governance.watcher import RevisionWatcher
from router.local_destinations import Local
from router.pipeline import CompiledChannel, compile_channel
from router.presence_keeper import FRESH_CHECKS, PresenceKeeper
from router.presence_keeper import INTERVAL as PRESENCE_CHECK
from router.processing import Processor
from router.replay import ReplayResult
from router.retention import Pruner
from router.retention_schedule import retention_schedule
from router.store.ingest import GroupCommitWriter
from router.store.interruptible import STOP_GRACE
from router.store.migrate import upgrade
from router.store.opening import open_store
from router.store.presence import EngineLock, StoreInUse
from router.store.schema import deliveries

log = logging.getLogger(__name__)
# Destination kinds applied in the processing transaction (router/local_destinations.py).
LOCAL_KINDS: dict[str, Local] = {"job": Local(jobs.apply, jobs.lock_key)}


def compile_channels(
    config: EngineConfig, channels: dict[str, ChannelConfig], *, disabled: bool = False
) -> dict[str, CompiledChannel]:
    """Load every enabled channel's mappings (and the disabled ones' with ``disabled``, as
    ``check`` does: enabling one later must not stop the start); a mapping that fails is a
    ConfigError naming it."""
    mappings.mount(config.mappings)
    mappings.forget()  # compile against the mapping code as it is now, never a stale import
    compiled, problems = {}, []
    for name, channel in channels.items():
        if not (channel.enabled or disabled):
            continue
        try:
            code = mapping_code.digest(mapping_code.sources(config.mappings, channel))
            compiled[name] = replace(compile_channel(channel), mappings_sha256=code)
        except mappings.MappingError as exc:
            problems.append(
                ConfigProblem(str(channel_file(config.channels, name)), exc.key, str(exc))
            )
    for name, compiled_channel in compiled.items():
        file = str(channel_file(config.channels, name))
        for key, problem in channel_tls_problems(compiled_channel.config):
            problems.append(ConfigProblem(file, key, problem))
    problems.extend(http_port_clashes(config, {name: c.config for name, c in compiled.items()}))
    if problems:
        raise ConfigError(problems)
    check_mailboxes(config, {name: c.config for name, c in compiled.items()})
    return compiled


def numbered(
    channels: dict[str, CompiledChannel], revisions: dict[str, int]
) -> dict[str, CompiledChannel]:
    """``channels`` with the revision each was compiled from (recorded on its messages)."""
    return {
        name: replace(c, revision=revisions[name]) if name in revisions else c
        for name, c in channels.items()
    }


class Engine:
    """Everything ``run.py serve`` runs, in one asyncio loop plus two store threads.

    ``stop_grace``: how long a stop waits for the processor's batch and the dispatch rounds
    stuck in a statement (behind a lock) before it cancels them, all in the same span.
    ``presence_check``: how often the engine checks it still holds its engine lock."""

    def __init__(
        self,
        config: EngineConfig,
        channels: dict[str, ChannelConfig] | None = None,
        *,
        stop_grace: float = STOP_GRACE,
        presence_check: float = PRESENCE_CHECK,
    ):
        self.config = config
        self.store = open_store(config)
        revisions: dict[str, int] = {}
        # Governed: the channels not run (none of their revisions may or can), with why,
        # and those run from an older revision than their newest deployed one.
        self.left_out: dict[str, str] = {}
        self.fallbacks: dict[str, Fallback] = {}
        # Governed: running channels whose approved mapping code is gone from disk, with why.
        self.not_restartable: dict[str, str] = {}
        if channels is None:
            # Open: the channel files. Governed: the approved revisions in the store.
            channels = startup_channels(self.store, config, self.left_out, self.fallbacks)
            revisions = revision_numbers(self.store, config, channels)
            revisions |= {name: f.running for name, f in self.fallbacks.items()}
        self.channels = numbered(compile_channels(config, channels), revisions)
        self.writer = GroupCommitWriter(self.store, on_commit=self._committed)
        # SQLite commits one transaction at a time, each with its fsync: the processor's and
        # the dispatcher's writes join ingest's group commits. PostgreSQL runs them side by
        # side (and shares their WAL flushes by itself).
        transact = self.writer.run if self.store.is_sqlite else None
        self.gateway = Gateway(config, self.store, self.writer, lambda: self.channels)
        self.channels = self.gateway.attach(self.channels)
        self.dispatcher = Dispatcher(
            self.store,
            self.channels,
            self._make_sender,
            config.dispatch,
            owner=config.node,
            transact=transact,
            on_settled=self.deliveries_settled,
            stop_grace=stop_grace,
        )
        self.processor = Processor(
            self.store,
            self.channels,
            batch=config.processing.batch,
            on_deliveries=self.dispatcher.notify,
            transact=transact,
            local=LOCAL_KINDS,
            stop_grace=stop_grace,
        )
        if self.store.is_sqlite:
            # Declarative channels' messages commit settled, with their deliveries: no
            # processor round reads them back. On PostgreSQL each of those writes is a round
            # trip inside the one writer's transaction, which holds up every sender behind
            # it; the processor's batches there run beside ingest instead (docs/performance.md).
            self.writer.settler = self.processor
        self.listeners = [
            MllpListener(c.config, self.writer.submit)
            for c in self.channels.values()
            if c.config.source.mllp is not None
        ]
        self.mesh = mesh_schedule(
            config,
            [c.config for c in self.channels.values()],
            self.store,
            self.writer.submit_sync,
            self.deliveries_settled,
            jobs.unknown_report,
        )
        self.files = file_schedule(
            [c.config for c in self.channels.values()], self.store, self.writer.submit_sync
        )
        self.retention = retention_schedule(
            Pruner(self.store, batch=config.retention.batch, transact=transact),
            self.store,
            lambda: [c.config for c in self.channels.values()],
            config.retention.every,
        )
        self.http: _HttpServer | None = None
        self.reloader = Reloader(self)
        self.watcher = RevisionWatcher(self)
        self._stop = asyncio.Event()
        self.lock = EngineLock(self.store, fresh_for=FRESH_CHECKS * presence_check)
        self.presence = PresenceKeeper(self.lock, self._restore_running, presence_check)
        self._restored_under: str | None = None

    def _committed(self, touched: set[tuple[str, str]], unsettled: bool) -> None:
        """After a group commit: new deliveries for the dispatcher, new work for the processor."""
        if touched:
            self.dispatcher.notify(touched)
        if unsettled:
            self.processor.wake()

    def deliveries_settled(self, conn: Connection, channel: str, ids: list[int]) -> None:
        """In the transaction that settles ``channel``'s deliveries ``ids`` for good (sent or
        failed): the DPS jobs they belong to follow; a job record's own delivery is not one
        of its outputs. Only a channel that records jobs has any: the others' rounds cost
        no query. The routes are the processor's, kept with each reload, not found anew
        every round."""
        local = self.processor.local
        if channel in local:
            jobs.settled(conn, ids, {(channel, d) for d in local[channel]})

    def replayed(self, kind: str, results: list[ReplayResult]) -> None:
        """Wake who has new work after a reprocess (the processor) or a resend (the
        dispatcher, for the copies' destinations), instead of leaving it to their polls.
        Reads the store: call it from a worker thread."""
        if kind == "reprocess":
            self.processor.wake()
            return
        copies = [int(r.copy) for r in results if r.copy]
        if not copies:
            return
        d = deliveries.c
        with self.store.read() as conn:
            keys = conn.execute(select(d.channel, d.destination).where(d.id.in_(copies))).all()
        self.dispatcher.notify({(k.channel, k.destination) for k in keys})

    def _make_sender(self, channel: str, name: str, config: DestinationConfig) -> Sender:
        if config.directory is not None and config.kind in BOUND:
            return AddressedSender(
                lambda address: self._make_sender(channel, name, with_address(config, address))
            )
        if config.mllp is not None:
            return MllpSender(config.mllp)
        if config.file is not None:
            return FileSender(config.file)
        if config.http is not None:
            return HttpSender(config.http)
        if config.mesh is not None:
            return mesh_sender(self.config, config.mesh, self.store)
        if config.smtp is not None:
            return SmtpSender(config.smtp, self.store)
        if config.job is not None:
            return JobSender(self.store)
        assert config.channel is not None
        return ChannelSender(config.channel, self.store, on_commit=self._wake_processor)

    def _wake_processor(self) -> None:
        """Late-bound: the dispatcher makes its senders before the processor exists."""
        self.processor.wake()

    async def start(self, *, http: bool = True) -> None:
        # Held until the stop: ``run.py db restore`` refuses to replace the store meanwhile.
        # SQLite's lock file before the migrations (a restore running is not migrated under
        # it); PostgreSQL's lock after them (it records the tables they made).
        if self.store.is_sqlite:
            await asyncio.to_thread(self.lock.take)
        await asyncio.to_thread(upgrade, self.store)
        if not self.store.is_sqlite:
            await asyncio.to_thread(self.lock.take)
            await self.presence.start()
        await asyncio.to_thread(self.lock.announce)
        log_expiring(log, self.presented_certificates(), datetime.now(UTC))
        configs = [c.config for c in self.channels.values()]
        now = datetime.now(UTC)
        log_trust_running_out(log, self.trusted_bundles(), revocation_lists(configs), now)
        self.writer.start()
        self.processor.start()
        await self.gateway.start()
        await self.dispatcher.start()
        for listener in self.listeners:
            await listener.start()
        await asyncio.to_thread(self.mesh.start)
        await asyncio.to_thread(self.files.start)
        await asyncio.to_thread(self.retention.start)
        await self.watcher.start()
        if http:
            from router.api.app import create_app
            from router.api.lingering_close import LingeringHTTPProtocol

            app = create_app(self)
            sock = http_socket(self.config.http.host, self.config.http.port)
            self.http = _HttpServer(
                uvicorn.Config(
                    app,
                    host=self.config.http.host,
                    port=self.config.http.port,
                    log_level="warning",
                    log_config=None,  # its warnings go through the engine's log format
                    lifespan="off",
                    http=LingeringHTTPProtocol,  # a refused body's 413 is read, not reset
                )
            )
            self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]))
            while not self.http.started and not self._http_task.done():
                await asyncio.sleep(0.01)
            if self._http_task.done():
                self._http_task.result()
                raise RuntimeError(f"HTTP server on port {self.config.http.port} did not start")
        # Everything built so far lives as long as the engine: out of the collector's way.
        gc.freeze()
        log.info("tie is running with %d channel(s)", len(self.channels))

    async def stop(self) -> None:
        """Stop taking messages first, then let in-flight work finish and close the store."""
        await self.presence.stop()
        await self.watcher.stop()
        await asyncio.to_thread(self.mesh.stop)
        await asyncio.to_thread(self.files.stop)
        await asyncio.to_thread(self.retention.stop)
        for listener in self.listeners:
            await listener.stop()
        if self.http is not None:
            self.http.should_exit = True
            await self._http_task
        await self.gateway.stop()
        # Side by side: a batch and a round both stuck behind a lock are cancelled after one
        # stop grace, not one grace after the other.
        await asyncio.gather(self.dispatcher.stop(), asyncio.to_thread(self.processor.stop))
        await asyncio.to_thread(self.writer.stop)
        await asyncio.to_thread(self.lock.release)
        self.store.dispose()

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.start()
        except BaseException:
            # A start cut short (a port in use) stops what it started, so that the log
            # shows the cause and not each worker cancelled as if it had died.
            await self.stop()
            raise
        await self.run_until_stopped()

    async def run_until_stopped(self) -> None:
        """Once started: wait for a stop (a signal, or a restore of the store), then stop;
        StoreInUse when a restore stopped the engine (run.py serve exits 1)."""
        await self._stop.wait()
        log.info("stopping")
        await self.stop()
        if self._restored_under:
            raise StoreInUse(self._restored_under)

    def _restore_running(self, reason: str) -> None:
        """A restore holds or replaced the store whose lock this engine lost: stop
        (router/presence_keeper.py)."""
        self._restored_under = reason
        self._stop.set()

    async def reload(self, actor: str) -> ReloadResult:
        """Re-read the channel files: open mode deploys the changes, governed mode proposes
        them as revisions by ``actor`` (docs/governance.md)."""
        return await reload_files(self, actor)

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.reload("sighup"), name="reload on SIGHUP")
        task.add_done_callback(_report_reload)

    def presented_certificates(self) -> list[Presented]:
        """The certificate files the running channels and the MESH mailboxes present; a
        listening MLLP source's with what it serves (router/connectors/mllp/tls.py)."""
        found = presented_certificates([c.config for c in self.channels.values()], self.config.mesh)
        serving = {x.channel.name: x.tls for x in self.listeners if x.tls is not None}
        return [
            item._replace(served=serving[item.channel].served_expiry)
            if item.role == "mllp_server" and item.channel in serving
            else item
            for item in found
        ]

    def trusted_bundles(self) -> list[Presented]:
        """The CA files the running channels and the MESH mailboxes verify peers with."""
        return trusted_bundles([c.config for c in self.channels.values()], self.config.mesh)

    def served_crls(self) -> list[Presented]:
        """The CRL of each listening MLLP source, with the ``nextUpdate`` of the one it
        checks clients against (a renewed file that does not load leaves it unchanged)."""
        serving = {x.channel.name: x.tls for x in self.listeners if x.tls is not None}
        return [
            crl._replace(served=serving[crl.channel].served_crl_next_update)
            for crl in revocation_lists([c.config for c in self.channels.values()])
            if crl.channel in serving
        ]

    @property
    def listening(self) -> bool:
        return all(listener.serving for listener in self.listeners)


def _report_reload(task: asyncio.Task[ReloadResult]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reload on SIGHUP failed: %s", task.exception())


def http_socket(host: str, port: int) -> socket.socket:
    """The HTTP server's socket, bound here rather than by uvicorn, which would log its own
    line and exit: a port in use is a ListenError naming engine.yaml's key, as for MLLP."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(
            exc.errno,
            f"HTTP cannot listen on {host}:{port}: "
            + (os.strerror(exc.errno) if exc.errno else str(exc))
            + " (http.host and http.port in engine.yaml)",
        ) from exc
    return sock


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the engine decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
