"""Which channel texts the engine runs, and the records of deploying them.

In ``governed`` mode the engine runs each channel's newest approved revision from the
store, not its file. On the first start with no revisions at all, the channel files
present become revision 1 of each channel, approved and deployed by ``bootstrap`` (and
audited as such). In ``open`` mode the files are the truth; each reload that changes a
channel records the new text as a deployed revision by whoever asked, so that the
channel's last changer is known (the hold rules need it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, exists, func, select, update

from router import audit
from router.config import ChannelConfig, ConfigError, EngineConfig, channel_file, load_channels
from router.config.loading import channel_from_text, read_text
from router.governance import fallback, mapping_code
from router.governance.deploy_checks import lapsed_approval, unapproved_code
from router.governance.fallback import Fallback
from router.governance.models import APPROVED, DEPLOY_FAILED, DEPLOYED, RUNNING, SUPERSEDED
from router.governance.revisions import (
    insert_revision,
    lock_channel,
    running,
    sha256,
)
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.locks import hold_key
from router.store.schema import channel_revisions

log = logging.getLogger(__name__)
r = channel_revisions.c
BOOTSTRAP = "bootstrap"


@dataclass(frozen=True)
class RunningText:
    channel: str
    number: int
    state: str
    sha256: str
    yaml: str
    mappings_sha256: str | None = None  # the mapping code approved with it
    approver: str | None = None


TEXT_COLUMNS = (r.channel, r.number, r.state, r.sha256, r.yaml, r.mappings_sha256, r.approver)


def running_texts(store: Store) -> dict[str, RunningText]:
    """Each channel's newest approved (or deployed) revision."""
    newest = (
        select(r.channel, func.max(r.number).label("number"))
        .where(r.state.in_(RUNNING))
        .group_by(r.channel)
        .subquery()
    )
    query = select(*TEXT_COLUMNS).join(
        newest, (newest.c.channel == r.channel) & (newest.c.number == r.number)
    )
    with store.read() as conn:
        return {row.channel: RunningText(*row) for row in conn.execute(query)}


def parse(config: EngineConfig, texts: dict[str, RunningText]) -> dict[str, ChannelConfig]:
    """The stored texts as channel configurations (relative paths against the channels folder)."""
    problems = []
    channels = {}
    for name, running_text in texts.items():
        try:
            channels[name] = channel_from_text(
                running_text.yaml, channel_file(config.channels, name)
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return channels


def running_channels(store: Store, config: EngineConfig) -> dict[str, ChannelConfig]:
    """What the engine runs: governed, the stored revisions (else the files); open, the files."""
    if config.governance == "governed":
        texts = running_texts(store)
        if texts:
            return parse(config, texts)
    return load_channels(config.channels)


def revision_numbers(
    store: Store, config: EngineConfig, channels: dict[str, ChannelConfig]
) -> dict[str, int]:
    """The running revision's number of each of ``channels`` whose configuration it is: what
    the engine records on the messages those channels settle. A channel started from an
    older revision (its running one cannot run: the engine numbers it from its fallback,
    ``startable``) or from a file not recorded has none here."""
    numbers = {}
    for name, text in running_texts(store).items():
        channel = channels.get(name)
        if channel is None:
            continue
        try:
            stored = channel_from_text(text.yaml, channel_file(config.channels, name))
        except ConfigError:
            continue
        # Not when it started from an earlier revision of the same text: its running one
        # may not run (approval lapsed, other code on disk).
        lapsed = lapsed_approval(store, text.state, text.approver)
        if (
            stored == channel
            and not lapsed
            and not unapproved_code(config, stored, text.mappings_sha256)
        ):
            numbers[name] = text.number
    return numbers


def file_texts(config: EngineConfig) -> dict[str, str]:
    """The text of every channel file, by channel name; each must be a valid channel."""
    load_channels(config.channels)  # the same checks as an open-mode start, all problems at once
    return {path.stem: read_text(path) for path in sorted(config.channels.glob("*.y*ml"))}


def bootstrap(store: Store, config: EngineConfig) -> list[str]:
    """Record the channel files as approved revision 1 when the store has no revisions yet.

    Returns the channels recorded (none when revisions exist already).
    """
    texts = file_texts(config)
    now = utcnow()
    with store.begin() as conn:
        hold_key(conn, "revisions")  # nodes starting at once: the second finds the first's
        if conn.scalar(select(exists().where(r.id.isnot(None)))):
            return []
        for name, text in texts.items():
            digest = sha256(text)
            code = mapping_code.channel_code(config, name, text)
            conn.execute(
                channel_revisions.insert().values(
                    channel=name,
                    number=1,
                    yaml=text,
                    sha256=digest,
                    author=BOOTSTRAP,
                    proposed_at=now,
                    state=DEPLOYED,
                    approver=BOOTSTRAP,
                    approved_at=now,
                    deployed_at=now,
                    reason="initial baseline from the channel files",
                    mappings=json.dumps(code) if code else None,
                    mappings_sha256=mapping_code.digest(code),
                )
            )
            audit.append(
                conn,
                BOOTSTRAP,
                "revision.bootstrap",
                f"channel:{name}",
                {"number": 1, "sha256": digest, "file": str(channel_file(config.channels, name))},
            )
    log.warning(
        "governed mode: no channel revisions yet; recorded %d channel file(s) as the approved "
        "baseline (actor 'bootstrap')",
        len(texts),
    )
    return list(texts)


def mark_deployed(store: Store, channel: str, number: int, *, actor: str) -> bool:
    """The engine applied ``number``: it becomes ``deployed`` and older deployed ones
    ``superseded``. False when another node marked it first."""
    now = utcnow()
    with store.begin() as conn:
        done = conn.execute(
            update(channel_revisions)
            .where(r.channel == channel, r.number == number, r.state == APPROVED)
            .values(state=DEPLOYED, deployed_at=now)
        ).rowcount
        if not done:
            return False
        _supersede_older(conn, channel, number)
        audit.append(conn, actor, "revision.deploy", f"channel:{channel}", {"number": number})
    return True


def mark_failed(store: Store, channel: str, number: int, *, actor: str, reason: str) -> bool:
    """The engine could not apply approved revision ``number``: it becomes ``deploy-failed``
    with ``reason``, so that the revision before it counts as running again. False when it
    was no longer ``approved`` (another node marked it first)."""
    with store.begin() as conn:
        done = conn.execute(
            update(channel_revisions)
            .where(r.channel == channel, r.number == number, r.state == APPROVED)
            .values(state=DEPLOY_FAILED, reason=reason)
        ).rowcount
        if done:
            audit.append(
                conn,
                actor,
                "revision.deploy-failed",
                f"channel:{channel}",
                {"number": number, "reason": reason},
            )
    return bool(done)


def record_deployed(
    store: Store,
    channel: str,
    text: str,
    *,
    actor: str,
    reason: str,
    code: dict[str, str] | None = None,
) -> int:
    """Open mode: a reload deployed ``text`` (naming ``code``); keep it as a revision by
    ``actor``. Its number."""
    digest = sha256(text)
    with store.begin() as conn:
        lock_channel(conn, channel)
        base = running(conn, channel)
        if base is not None and base.sha256 == digest:
            return int(base.number)
        number = insert_revision(
            conn,
            channel,
            text,
            digest,
            author=actor,
            state=DEPLOYED,
            reason=reason,
            base=base,
            code=code,
        )
        _supersede_older(conn, channel, number)
        audit.append(
            conn,
            actor,
            "revision.deploy",
            f"channel:{channel}",
            {"number": number, "sha256": digest, "mode": "open", "reason": reason},
        )
        return number


def channel_owner(conn: Connection, channel: str) -> str | None:
    """Who created or last changed the channel: the author of its running revision."""
    row: Any = running(conn, channel)
    return None if row is None else str(row.author)


def _supersede_older(conn: Connection, channel: str, number: int) -> None:
    conn.execute(
        update(channel_revisions)
        .where(
            r.channel == channel,
            r.number < number,
            r.state.in_((DEPLOYED, APPROVED)),
        )
        .values(state=SUPERSEDED)
    )


def startup_channels(
    store: Store,
    config: EngineConfig,
    left_out: dict[str, str] | None = None,
    fallbacks: dict[str, Fallback] | None = None,
) -> dict[str, ChannelConfig]:
    """The channels an engine starts with (see the module doc); migrates the store first.
    Governed, the channels left out go into ``left_out`` with why, and those started from
    an older revision into ``fallbacks`` (``startable``)."""
    from router.store.migrate import upgrade

    upgrade(store)
    if config.governance == "governed":
        if not running_texts(store):
            bootstrap(store, config)
        return startable(store, config, left_out, fallbacks)
    channels = load_channels(config.channels)
    record_files(store, config, actor="startup", reason="engine started with changed files")
    return channels


def startable(
    store: Store,
    config: EngineConfig,
    left_out: dict[str, str] | None = None,
    fallbacks: dict[str, Fallback] | None = None,
) -> dict[str, ChannelConfig]:
    """Governed: each channel's running revision, or, when that one cannot run (a mapping
    that no longer loads) or may not (its approver lost the role; the mapping code on disk
    is not the code approved with it), the newest deployed revision before it that can and
    may, passing over (and logging why) any that cannot either, else nothing: the engine
    runs only approved code, and one channel's revision that cannot run must not keep the
    whole engine from starting, nor one broken fallback leave out a channel an older
    approved revision could run. A channel left out goes into ``left_out`` with why, and one
    started from an older revision into ``fallbacks``, for ``/health``, ``/metrics`` and the
    dashboard (router/channel_health.py)."""
    channels = {}
    for name, text in running_texts(store).items():
        start = walk_back(store, config, name, text)
        if start.channel is not None:
            channels[name] = start.channel
        if start.number == text.number:
            continue
        why = start.why(text.number)
        if start.channel is not None:
            instead = f"starting it from its last deployed revision #{start.number} instead"
            if fallbacks is not None:
                fallbacks[name] = Fallback(start.number, text.number, why)
            fallback.record(store, config.node, name, text.number, start.number, why)
        else:
            instead = "the channel is left out"
            if asks_to_run(config, name, text.yaml):
                if left_out is not None:
                    left_out[name] = f"revision #{text.number} cannot run: {start.problems[0]}"
                fallback.record(store, config.node, name, text.number, None, why)
        log.error(
            "channel %s: revision #%d cannot run; %s:\n%s",
            name,
            text.number,
            instead,
            "\n".join(start.problems),
        )
    return channels


@dataclass(frozen=True)
class Start:
    """Which revision of a channel a start runs: ``number`` and its compiled ``channel``
    (both None when none may and can run), and why each newer one was passed over."""

    channel: ChannelConfig | None
    number: int | None
    problems: list[str]
    code: str | None = None  # the mapping code approved with it

    def why(self, newest: int) -> str:
        """The passed-over revisions' reasons, starting with ``newest``'s."""
        return "\n".join([f"revision #{newest} cannot run: {self.problems[0]}", *self.problems[1:]])


def walk_back(store: Store, config: EngineConfig, name: str, text: RunningText) -> Start:
    """``text`` if it may and can run, else the newest deployed revision before it that may
    and can, else none; what a start runs (and ``run.py check`` predicts). Logs nothing."""
    channel, problem = _start(store, config, name, text)
    if channel is not None:
        return Start(channel, text.number, [], text.mappings_sha256)
    problems = [str(problem)]
    for earlier in _deployed_before(store, name, text.number):
        channel, why = _start(store, config, name, earlier)
        if channel is not None:
            return Start(channel, earlier.number, problems, earlier.mappings_sha256)
        problems.append(f"passed over revision #{earlier.number}: {why}")
    return Start(None, None, problems)


def _start(
    store: Store, config: EngineConfig, name: str, text: RunningText
) -> tuple[ChannelConfig | None, ConfigError | str]:
    """``text`` compiled, or why it may not or cannot run. Whether it may is checked first:
    unapproved code is not even imported."""
    try:
        problem = lapsed_approval(store, text.state, text.approver) or unapproved_code(
            config, parsed(config, name, text.yaml), text.mappings_sha256
        )
        if problem:
            return None, problem
        return runnable(config, name, text.yaml), ""
    except ConfigError as exc:
        return None, exc


def asks_to_run(config: EngineConfig, name: str, text: str) -> bool:
    """Whether ``text`` asks for the channel to run: a disabled one is not missed."""
    try:
        return parsed(config, name, text).enabled
    except ConfigError:
        return True


def parsed(config: EngineConfig, name: str, text: str) -> ChannelConfig:
    """``text`` as the channel ``name``, not compiled (its mapping code not imported)."""
    return channel_from_text(text, channel_file(config.channels, name))


def runnable(config: EngineConfig, name: str, text: str) -> ChannelConfig:
    """``text`` as the channel ``name``, compiled (mappings loaded) if it is enabled; a
    ConfigError says why it cannot run."""
    from router.engine import compile_channels

    channel = parsed(config, name, text)
    compile_channels(config, {name: channel})
    return channel


def _deployed_before(store: Store, channel: str, before: int) -> list[RunningText]:
    """The revisions older than ``before`` that the engine once ran, newest first."""
    with store.read() as conn:
        rows = conn.execute(
            select(*TEXT_COLUMNS)
            .where(r.channel == channel, r.number < before, r.deployed_at.isnot(None))
            .order_by(r.number.desc())
        )
        return [RunningText(*row) for row in rows]


def changed_files(store: Store, config: EngineConfig) -> dict[str, str]:
    """Channel files whose text differs from the channel's running revision (or that have none)."""
    known = running_texts(store)
    return {
        name: text
        for name, text in file_texts(config).items()
        if name not in known or known[name].sha256 != sha256(text)
    }


def record_reload(store: Store, config: EngineConfig, *, actor: str) -> list[str]:
    """Open mode: a reload by ``actor``. The changed files are compiled first: one that
    cannot run (a mapping that does not load) raises ConfigError and nothing is recorded,
    rather than a revision recorded as deployed that the engine then refuses to run."""
    from router.engine import compile_channels

    changed = changed_files(store, config)
    if changed:
        files = load_channels(config.channels)
        compile_channels(config, {name: files[name] for name in changed})
    return record_files(store, config, actor=actor, reason="reload")


def record_files(store: Store, config: EngineConfig, *, actor: str, reason: str) -> list[str]:
    """Open mode: keep each changed file as a deployed revision by ``actor``; their names."""
    changed = changed_files(store, config)
    for name, text in changed.items():
        code = mapping_code.channel_code(config, name, text)
        record_deployed(store, name, text, actor=actor, reason=reason, code=code)
    return sorted(changed)
