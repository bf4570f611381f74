"""Channel revisions in ``governed`` mode: propose, diff, approve (four eyes), reject, roll back.

A revision is the whole YAML text of one channel file, with the source of the mapping code
it names (router/governance/mapping_code.py): a change of that code alone is a change to
propose and approve like any other. Proposing one supersedes the
channel's earlier open proposals, so an approver always decides on the latest; approving
needs the ``approver`` role and someone other than the author. An approved revision is
applied by the running engine (router/governance/watcher.py), which marks it ``deployed``.
Every revision is kept and every action is an audit event with its actor.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Any

from sqlalchemy import Connection, func, select, update

from router import audit, mappings
from router.config import ConfigError, EngineConfig, channel_file, cross_check
from router.config.loading import channel_from_text
from router.governance import mapping_code
from router.governance.actors import (
    credential_maker_among,
    made_by_author,
    person,
    refuse,
    require_role,
)
from router.governance.mapping_code import short
from router.governance.models import (
    APPROVED,
    DEPLOYED,
    PROPOSED,
    REJECTED,
    RUNNING,
    SUPERSEDED,
    FourEyesViolation,
    GovernanceError,
    InvalidRevision,
    MissingReason,
    NotFound,
    Revision,
    RevisionDiff,
)
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.locks import hold_key
from router.store.schema import channel_revisions

r = channel_revisions.c
MAX_YAML = 256 * 1024  # a channel file is a page of YAML; refuse anything far larger


def list_revisions(
    store: Store, channel: str | None = None, *, state: str | None = None, limit: int = 200
) -> list[Revision]:
    """Revisions newest first, optionally of one channel and in one state; without their
    mapping code (``mappings`` empty: tens of KB each), which ``get_revision`` gives."""
    listed = [c for c in channel_revisions.c if c.name != "mappings"]
    query = select(*listed).order_by(r.proposed_at.desc(), r.id.desc()).limit(limit)
    if channel is not None:
        query = query.where(r.channel == channel)
    if state is not None:
        query = query.where(r.state == state)
    with store.read() as conn:
        return [_revision(row) for row in conn.execute(query)]


def get_revision(store: Store, channel: str, number: int) -> Revision:
    with store.read() as conn:
        return _revision(_row(conn, channel, number))


def running(conn: Connection, channel: str) -> Any:
    """The row of the revision the engine runs (or is about to): the newest approved one."""
    return conn.execute(
        select(channel_revisions)
        .where(r.channel == channel, r.state.in_(RUNNING))
        .order_by(r.number.desc())
        .limit(1)
    ).first()


def diff(
    store: Store, channel: str, number: int | None = None, *, against: int | None = None
) -> RevisionDiff:
    """Unified diff of ``number`` (default: the newest proposal, else the newest revision)
    against ``against`` (default: the running revision, or for that one its predecessor)."""
    with store.read() as conn:
        if number is None:
            number = conn.scalar(
                select(func.max(r.number)).where(r.channel == channel, r.state == PROPOSED)
            ) or conn.scalar(select(func.max(r.number)).where(r.channel == channel))
            if number is None:
                raise NotFound(f"channel {channel!r} has no revisions")
        target = _row(conn, channel, number)
        if against is None:
            base = running(conn, channel)
            if base is not None and base.number == number:
                base = _row(conn, channel, target.based_on) if target.based_on else None
        else:
            base = _row(conn, channel, against)
    before = base.yaml if base is not None else ""
    label = f"{channel}.yaml"
    old_name = f"#{base.number}" if base is not None else None
    text = _unified(before, target.yaml, label, old_name, f"#{number}")
    old_code, new_code = mapping_code.code_of(base), mapping_code.code_of(target)
    for path in sorted(set(old_code) | set(new_code)):
        text += _unified(
            old_code.get(path, ""),
            new_code.get(path, ""),
            f"mappings/{path}",
            old_name if path in old_code else None,
            f"#{number}" if path in new_code else None,
        )
    return RevisionDiff(channel, number, base.number if base is not None else None, text)


def _unified(before: str, after: str, label: str, old: str | None, new: str | None) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            f"{label} {old}" if old else "/dev/null",
            f"{label} {new}" if new else "/dev/null",
        )
    )


def propose(
    store: Store,
    config: EngineConfig,
    channel: str,
    text: str,
    *,
    actor: str,
    reason: str = "",
) -> Revision:
    """Record ``text`` as the channel's next revision, awaiting approval.

    The text must be a valid channel named ``channel`` whose mappings load. Proposing
    the running text again is refused; proposing the text of the open proposal again
    returns that proposal.
    """
    if config.governance != "governed":
        raise GovernanceError(
            "governance is open (engine.yaml): edit the channel file and reload instead"
        )
    check_channel_text(store, config, channel, text)
    digest = sha256(text)
    code = mapping_code.channel_code(config, channel, text)
    code_digest = mapping_code.digest(code)
    with store.begin() as conn:
        lock_channel(conn, channel)
        require_role(conn, actor, "engineer")
        base = running(conn, channel)
        if base is not None and (base.sha256, base.mappings_sha256) == (digest, code_digest):
            raise GovernanceError(f"{channel}: no change from the running revision #{base.number}")
        pending = conn.execute(
            select(channel_revisions).where(r.channel == channel, r.state == PROPOSED)
        ).all()
        for row in pending:
            if (row.sha256, row.mappings_sha256) == (digest, code_digest):
                return _revision(row)
        for row in pending:
            _settle(conn, row, SUPERSEDED, None, f"superseded by a newer proposal from {actor}")
        number = insert_revision(
            conn,
            channel,
            text,
            digest,
            author=actor,
            state=PROPOSED,
            reason=reason,
            base=base,
            code=code,
        )
        audit.append(
            conn,
            actor,
            "revision.propose",
            f"channel:{channel}",
            {"number": number, "sha256": digest, "mappings_sha256": code_digest, "reason": reason},
        )
        return _revision(_row(conn, channel, number))


def approve(
    store: Store,
    config: EngineConfig,
    channel: str,
    number: int,
    *,
    actor: str,
    made_by: str | None = None,
) -> Revision:
    """Approve a proposal: not by its author, nor with a credential its author made
    (``made_by``: the token's issuer, the session's password setter), only by an
    ``approver``, only of the running base, and only if it still passes the checks it passed
    when proposed (a mapping it names may have changed or gone since: approving it anyway
    would approve what cannot run).

    The revision becomes ``approved``; the running engine deploys it within seconds.
    """
    with store.read() as conn:
        row = _approvable(conn, channel, number, actor)
    maker = credential_maker_among(actor, made_by, [row.author])
    if maker is not None:
        raise refuse(
            store,
            actor,
            "revision.approve-refused",
            f"channel:{channel}",
            {"number": number, "author": row.author, "credential_made_by": made_by},
            made_by_author(actor, maker, f"proposed {channel} #{number}"),
        )
    check_channel_text(store, config, channel, row.yaml)
    now = mapping_code.digest(mapping_code.channel_code(config, channel, row.yaml))
    if now != row.mappings_sha256:
        raise GovernanceError(
            f"{channel} #{number}: its mapping code changed on disk since it was proposed "
            f"(sha256 {short(row.mappings_sha256)}, now {short(now)}): propose it again, "
            "so that the code approved is the code that runs"
        )
    with store.begin() as conn:
        row = _approvable(conn, channel, number, actor)
        _settle(conn, row, APPROVED, actor, "")
        audit.append(
            conn,
            actor,
            "revision.approve",
            f"channel:{channel}",
            {
                "number": number,
                "sha256": row.sha256,
                "mappings_sha256": row.mappings_sha256,
                "author": row.author,
            },
        )
        return _revision(_row(conn, channel, number))


def _approvable(conn: Connection, channel: str, number: int, actor: str) -> Any:
    """The row of proposal ``number`` if ``actor`` may approve it now; else why not."""
    require_role(conn, actor, "approver")
    row = _row(conn, channel, number)
    if row.state != PROPOSED:
        raise GovernanceError(f"{channel} #{number} is {row.state}, not proposed")
    if person(row.author) == person(actor):
        raise FourEyesViolation(
            f"{actor} proposed {channel} #{number} and cannot approve it: another approver must"
        )
    base = running(conn, channel)
    if (base.number if base is not None else None) != row.based_on:
        raise GovernanceError(
            f"{channel} #{number} was proposed against #{row.based_on}, but "
            f"#{base.number if base is not None else '-'} runs now: propose it again"
        )
    return row


def reject(store: Store, channel: str, number: int, *, actor: str, reason: str) -> Revision:
    """Turn a proposal down with a reason (its author may withdraw it the same way).

    ``approver`` and ``approved_at`` of a rejected revision say who rejected it and when.
    """
    if not reason.strip():
        raise MissingReason("a rejection needs a reason, and none was given")
    with store.begin() as conn:
        row = _row(conn, channel, number)
        if row.author != actor:
            require_role(conn, actor, "approver")
        if row.state != PROPOSED:
            raise GovernanceError(f"{channel} #{number} is {row.state}, not proposed")
        _settle(conn, row, REJECTED, actor, reason)
        audit.append(
            conn,
            actor,
            "revision.reject",
            f"channel:{channel}",
            {"number": number, "reason": reason},
        )
        return _revision(_row(conn, channel, number))


def rollback(
    store: Store, config: EngineConfig, channel: str, number: int, *, actor: str, reason: str = ""
) -> Revision:
    """Propose the text of an earlier revision again: a new revision, still to be approved.

    The mapping code is not written back to disk: a revision that ran other code than is
    on disk now is refused, saying so, rather than proposing its YAML with today's code
    under the name of a rollback."""
    old = get_revision(store, channel, number)
    if old.mappings_sha256 is not None:
        now = mapping_code.digest(mapping_code.channel_code(config, channel, old.yaml))
        if now != old.mappings_sha256:
            raise GovernanceError(
                f"{channel} #{number} ran other mapping code ({short(old.mappings_sha256)}) "
                f"than is under {config.mappings} now ({short(now)}): restore that code "
                f"first (run.py channel diff {channel} {number} shows it; it is in git), "
                "then roll back"
            )
    return propose(
        store,
        config,
        channel,
        old.yaml,
        actor=actor,
        reason=reason or f"rollback to #{number}",
    )


def check_channel_text(store: Store, config: EngineConfig, channel: str, text: str) -> None:
    """Raise ``InvalidRevision`` unless ``text`` is a channel named ``channel`` that compiles
    and fits beside the other running channels (ports, feeds)."""
    from router.governance.deploy import running_channels
    from router.pipeline import compile_channel

    if len(text.encode("utf-8")) > MAX_YAML:
        raise InvalidRevision(f"{channel}: larger than {MAX_YAML} bytes", [])
    path = channel_file(config.channels, channel)
    try:
        candidate = channel_from_text(text, path)
        mappings.mount(config.mappings)
        mappings.forget()  # the code on disk now, not what this process imported earlier
        compile_channel(candidate)
    except ConfigError as exc:
        raise InvalidRevision(f"{channel}: not a valid channel", _lines(exc)) from exc
    except mappings.MappingError as exc:
        raise InvalidRevision(f"{channel}: {exc}", [f"{path}: {exc.key}: {exc}"]) from exc
    current = running_channels(store, config)
    before = {str(p) for p in cross_check(current, config.channels)}
    problems = [
        p
        for p in cross_check({**current, channel: candidate}, config.channels)
        if str(p) not in before
    ]
    if problems:
        raise InvalidRevision(
            f"{channel}: conflicts with other channels", _lines(ConfigError(problems))
        )


def lock_channel(conn: Connection, channel: str) -> None:
    """Hold the channel's revisions until the transaction ends, before reading them: adding
    one reads the running revision, the open proposals and the highest number, then writes."""
    hold_key(conn, f"revisions/{channel}")


def insert_revision(
    conn: Connection,
    channel: str,
    text: str,
    digest: str,
    *,
    author: str,
    state: str,
    reason: str,
    base: Any,
    code: dict[str, str] | None = None,
) -> int:
    """Add ``text`` as the channel's next revision, based on the ``base`` row (the running
    revision, or None); its number. Proposals and open-mode deploys share one numbering;
    superseding what it replaces is the caller's (the two differ in what they supersede), and
    so is ``lock_channel`` first."""
    now = utcnow()
    number = (conn.scalar(select(func.max(r.number)).where(r.channel == channel)) or 0) + 1
    conn.execute(
        channel_revisions.insert().values(
            channel=channel,
            number=number,
            yaml=text,
            sha256=digest,
            author=author,
            proposed_at=now,
            state=state,
            deployed_at=now if state == DEPLOYED else None,
            reason=reason,
            based_on=base.number if base is not None else None,
            mappings=json.dumps(code) if code else None,
            mappings_sha256=mapping_code.digest(code or {}),
        )
    )
    return number


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _lines(exc: ConfigError) -> list[str]:
    return [str(p) for p in exc.problems]


def _settle(conn: Connection, row: Any, state: str, by: str | None, reason: str) -> None:
    """Move ``row`` on from the state it was read in; ``by`` decided it (approver column)."""
    values: dict[str, Any] = {"state": state, "reason": reason or row.reason}
    if by is not None:
        values.update(approver=by, approved_at=utcnow())
    done = conn.execute(
        update(channel_revisions).where(r.id == row.id, r.state == row.state).values(**values)
    ).rowcount
    if not done:
        raise GovernanceError(f"{row.channel} #{row.number} changed meanwhile; look again")


def _row(conn: Connection, channel: str, number: int) -> Any:
    row = conn.execute(
        select(channel_revisions).where(r.channel == channel, r.number == number)
    ).first()
    if row is None:
        raise NotFound(f"no revision #{number} of channel {channel!r}")
    return row


def _revision(row: Any) -> Revision:
    return Revision(
        id=row.id,
        channel=row.channel,
        number=row.number,
        state=row.state,
        author=row.author,
        proposed_at=row.proposed_at,
        sha256=row.sha256,
        reason=row.reason,
        based_on=row.based_on,
        approver=row.approver,
        approved_at=row.approved_at,
        deployed_at=row.deployed_at,
        yaml=row.yaml,
        mappings_sha256=row.mappings_sha256,
        mappings=mapping_code.code_of(row),
    )
