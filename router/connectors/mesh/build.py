"""How the engine gets its MESH parts: pollers grouped by mailbox, senders by destination."""

from __future__ import annotations

from collections.abc import Callable

from router.config import ChannelConfig, ConfigError, ConfigProblem, EngineConfig, channel_file
from router.config.mesh import MeshTarget
from router.connectors.mesh.poller import MailboxPoller, OnUnknownReport
from router.connectors.mesh.sender import MeshSender
from router.scheduling import Job, PollSchedule
from router.store.database import Store
from router.store.deliveries import OnFailed
from router.store.inbound import Inbound, Receipt


def check_mailboxes(config: EngineConfig, channels: dict[str, ChannelConfig]) -> None:
    """Every MESH source and destination names a mailbox of engine.yaml's ``mesh.mailboxes``."""
    known = config.mesh.mailboxes
    problems = []
    for name, channel in channels.items():
        file = str(channel_file(config.channels, name))
        if channel.source.mesh is not None and channel.source.mesh.mailbox not in known:
            problems.append(_unknown(file, "source.mesh.mailbox", channel.source.mesh.mailbox))
        for dest_name, dest in channel.destinations.items():
            if dest.mesh is not None and dest.mesh.mailbox not in known:
                where = f"destinations.{dest_name}.mesh.mailbox"
                problems.append(_unknown(file, where, dest.mesh.mailbox))
    if problems:
        raise ConfigError(problems)


def _unknown(file: str, where: str, name: str) -> ConfigProblem:
    return ConfigProblem(file, where, f"no mailbox {name!r} under mesh.mailboxes in engine.yaml")


def mesh_schedule(
    config: EngineConfig,
    channels: list[ChannelConfig],
    store: Store,
    submit: Callable[[Inbound], Receipt],
    on_failed: OnFailed | None = None,
    on_unknown_report: OnUnknownReport | None = None,
) -> PollSchedule:
    """One poller per mailbox that feeds channels, in channel order; ``on_failed`` is told of
    deliveries a non-delivery report fails, ``on_unknown_report`` of a report whose
    delivery the store no longer has."""
    by_mailbox: dict[str, list[ChannelConfig]] = {}
    for channel in channels:
        if channel.source.mesh is not None:
            by_mailbox.setdefault(channel.source.mesh.mailbox, []).append(channel)
    pollers = [
        MailboxPoller(
            name, config.mesh.mailboxes[name], fed, store, submit, on_failed, on_unknown_report
        )
        for name, fed in by_mailbox.items()
    ]
    jobs = [
        job
        for p in pollers
        for job in (
            Job(f"mesh-handshake:{p.name}", p.handshake, p.handshake_every),
            Job(f"mesh-poll:{p.name}", p.poll, p.interval),
        )
    ]
    return PollSchedule(pollers, jobs, "MESH mailbox(es)")


def mesh_sender(config: EngineConfig, target: MeshTarget, store: Store) -> MeshSender:
    return MeshSender(target, config.mesh.mailboxes[target.mailbox], store)
