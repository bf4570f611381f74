"""CLI commands for governance: ``channel propose|revisions|diff|approve|reject|rollback``,
``reload`` and ``holds list|show|request|approve|reject`` (docs/governance.md)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from router import governance
from router.cli.credentials import signed_in
from router.cli.output import (
    CommandError,
    add_json,
    engine_config,
    open_store,
    positive_int,
    print_json,
    print_table,
)
from router.config import ConfigError, channel_file
from router.governance.holds import REQUESTERS
from router.governance.models import BATCH_STATES, REVISION_STATES

T = TypeVar("T")
Sub = argparse._SubParsersAction  # type: ignore[type-arg]


def register(sub: Sub) -> None:
    _channel_actions(_subcommands(sub.choices["channel"]))

    p = sub.add_parser("reload", help="re-read channel files (open: deploy; governed: propose)")
    _add_actor(p)
    p.set_defaults(handler=reload)

    p = sub.add_parser("holds", help="held deliveries and their release approval")
    holds = p.add_subparsers(dest="holds_command", required=True, metavar="ACTION")
    a = holds.add_parser("list", help="open and decided batches")
    a.add_argument("--state", choices=BATCH_STATES)
    add_json(a)
    a.set_defaults(handler=holds_list)
    a = holds.add_parser("show", help="a batch's summary by destination, message type and label")
    a.add_argument("id", help="a batch number, or CHANNEL/DESTINATION for its open batch")
    add_json(a)
    a.set_defaults(handler=holds_show)
    a = holds.add_parser("request", help="ask for release: the held deliveries become a batch")
    a.add_argument("target", metavar="CHANNEL/DESTINATION")
    _add_actor(a)
    a.set_defaults(handler=holds_request)
    a = holds.add_parser("approve", help="approve a batch's release")
    a.add_argument("id", type=positive_int)
    _add_actor(a)
    a.set_defaults(handler=holds_approve)
    a = holds.add_parser("reject", help="cancel a batch's deliveries with a reason")
    a.add_argument("id", type=positive_int)
    a.add_argument("--reason", required=True)
    _add_actor(a)
    a.set_defaults(handler=holds_reject)


def _subcommands(parser: argparse.ArgumentParser) -> Sub:
    """The ``channel`` command's actions (list, pause, resume), to add the revision ones."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor",
        help="the user acting, asked for their password at a terminal; or give their API "
        "token in $TIE_TOKEN",
    )


def _channel_actions(actions: Sub) -> None:
    a = actions.add_parser("propose", help="propose a channel file as a new revision")
    a.add_argument("file", help="a channel file, or a channel name (its file in channels/)")
    a.add_argument("--reason", default="")
    _add_actor(a)
    add_json(a)
    a.set_defaults(handler=channel_propose)
    a = actions.add_parser("revisions", help="a channel's revisions, newest first")
    a.add_argument("name", nargs="?")
    a.add_argument("--state", choices=REVISION_STATES)
    add_json(a)
    a.set_defaults(handler=channel_revisions)
    a = actions.add_parser("diff", help="unified diff of a revision against the running one")
    a.add_argument("name")
    a.add_argument("rev", nargs="?", type=positive_int, help="default: the open proposal")
    a.set_defaults(handler=channel_diff)
    a = actions.add_parser("approve", help="approve a revision (not your own); then it deploys")
    a.add_argument("name")
    a.add_argument("rev", type=positive_int)
    _add_actor(a)
    a.set_defaults(handler=channel_approve)
    a = actions.add_parser("reject", help="reject a proposed revision with a reason")
    a.add_argument("name")
    a.add_argument("rev", type=positive_int)
    a.add_argument("--reason", required=True)
    _add_actor(a)
    a.set_defaults(handler=channel_reject)
    a = actions.add_parser("rollback", help="propose an earlier revision's text again")
    a.add_argument("name")
    a.add_argument("rev", type=positive_int)
    a.add_argument("--reason", default="")
    _add_actor(a)
    a.set_defaults(handler=channel_rollback)


def _run(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return work(*args, **kwargs)
    except governance.InvalidRevision as exc:
        raise CommandError("\n".join([str(exc), *exc.problems]), 2) from exc
    except governance.MissingReason as exc:
        raise CommandError(f"{exc}: give --reason TEXT", 2) from exc
    except governance.RoleRequired as exc:
        raise CommandError(f"{exc}: act as an active user with the role this needs") from exc
    except governance.GovernanceError as exc:
        raise CommandError(str(exc)) from exc
    except ConfigError as exc:
        raise CommandError(f"configuration is not valid:\n{exc}", 2) from exc


def _record(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


def channel_propose(args: argparse.Namespace) -> int:
    config = engine_config(args)
    path = Path(args.file)
    if not path.is_file():
        path = channel_file(config.channels, args.file)
    if not path.is_file():
        raise CommandError(f"no channel file {args.file!r}")
    text = path.read_text(encoding="utf-8")
    store = open_store(args)
    revision = _run(
        governance.propose,
        store,
        config,
        path.stem,
        text,
        actor=signed_in(args, store, "engineer").name,
        reason=args.reason,
    )
    if args.json:
        print_json(_record(revision))
    else:
        print(f"proposed {revision.channel} #{revision.number} by {revision.author}")
    return 0


def channel_revisions(args: argparse.Namespace) -> int:
    found = governance.list_revisions(open_store(args), args.name, state=args.state)
    rows = [_record(r) for r in found]
    if args.json:
        print_json(rows)
    else:
        columns = ["channel", "number", "state", "author", "proposed_at", "approver", "reason"]
        print_table(rows, columns)
    return 0


def channel_diff(args: argparse.Namespace) -> int:
    found = _run(governance.diff, open_store(args), args.name, args.rev)
    sys.stdout.write(found.text or f"{args.name} #{found.number}: no difference\n")
    return 0


def channel_approve(args: argparse.Namespace) -> int:
    store, config = open_store(args), engine_config(args)
    who = signed_in(args, store, "approver")
    found = _run(
        governance.approve,
        store,
        config,
        args.name,
        args.rev,
        actor=who.name,
        made_by=who.made_by,
    )
    print(f"approved {found.channel} #{found.number}: the running engine deploys it shortly")
    return 0


def channel_reject(args: argparse.Namespace) -> int:
    store = open_store(args)
    who = signed_in(args, store, "approver", "engineer")  # an engineer withdraws their own
    found = _run(governance.reject, store, args.name, args.rev, actor=who.name, reason=args.reason)
    print(f"rejected {found.channel} #{found.number}")
    return 0


def channel_rollback(args: argparse.Namespace) -> int:
    config = engine_config(args)
    store = open_store(args)
    found = _run(
        governance.rollback,
        store,
        config,
        args.name,
        args.rev,
        actor=signed_in(args, store, "engineer").name,
        reason=args.reason,
    )
    print(f"proposed {found.channel} #{found.number} (the text of #{args.rev}); it needs approval")
    return 0


def reload(args: argparse.Namespace) -> int:
    """Without a running engine in this process, the store carries the change: the engine's
    revision watcher applies it within seconds (open mode)."""
    from router.governance.deploy import record_reload
    from router.governance.files import propose_files

    config = engine_config(args)
    store = open_store(args)
    # The author becomes the channel's owner for the hold rules: a real engineer, as by API.
    who = signed_in(args, store, "engineer").name
    if config.governance == "governed":
        proposed = _run(propose_files, store, config, actor=who)
        for revision in proposed:
            print(f"proposed {revision.channel} #{revision.number}: it needs approval")
        if not proposed:
            print("no channel file differs from its running revision")
        return 0
    changed = _run(record_reload, store, config, actor=who)
    print(f"deploying {', '.join(changed)}" if changed else "no channel file changed")
    return 0


def holds_list(args: argparse.Namespace) -> int:
    states = (args.state,) if args.state else None
    rows = [_record(b) for b in governance.list_batches(open_store(args), states=states)]
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            row["approvers"] = ", ".join(row["approvers"])
        columns = ["id", "channel", "destination", "state", "deliveries", "required", "approvers"]
        print_table(rows, [*columns, "requested_by", "waiting_for"])
    return 0


def holds_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    if "/" in args.id:
        channel, _, destination = args.id.partition("/")
        summary = governance.open_batch_summary(store, channel, destination)
    elif args.id.isdigit():
        summary = _run(governance.batch_summary, store, int(args.id))
    else:
        raise CommandError("give a batch number or CHANNEL/DESTINATION")
    if args.json:
        print_json(_record(summary))
        return 0
    batch = summary.batch
    print(f"batch {batch.id or '(open)'}: {batch.channel}/{batch.destination} {batch.state}")
    if batch.required is None:  # an open batch: nobody has asked for its release yet
        release = f"not requested (holds request {batch.channel}/{batch.destination})"
    else:
        release = f"approvals: {len(batch.approvers)}/{batch.required}"
    print(f"  deliveries: {batch.deliveries}; {release}")
    if batch.waiting_for:
        print(f"  waiting for: {batch.waiting_for}")
    for title, counts in [
        ("destination", summary.by_destination),
        ("message type", summary.by_message_type),
        *summary.labels.items(),
    ]:
        print(f"  by {title}:")
        for value, count in counts.items():
            print(f"    {value}: {count}")
    return 0


def holds_request(args: argparse.Namespace) -> int:
    from router.governance.deploy import running_channels

    channel, _, destination = args.target.partition("/")
    config = engine_config(args)
    store = open_store(args)
    channels = _run(running_channels, store, config)
    who = signed_in(args, store, *REQUESTERS)
    found = _run(governance.request_release, store, channels, channel, destination, actor=who.name)
    print(f"batch {found.id}: {found.deliveries} deliveries; needs {found.required} approver(s)")
    return 0


def holds_approve(args: argparse.Namespace) -> int:
    store = open_store(args)
    who = signed_in(args, store, "approver")
    found = _run(governance.approve_batch, store, args.id, actor=who.name, made_by=who.made_by)
    if found.state == "released":
        print(f"batch {found.id} released: {found.deliveries} deliveries queued")
    else:
        print(f"batch {found.id} approved by {who.name}; waiting for {found.waiting_for}")
    return 0


def holds_reject(args: argparse.Namespace) -> int:
    store = open_store(args)
    who = signed_in(args, store, "approver")
    found = _run(governance.reject_batch, store, args.id, actor=who.name, reason=args.reason)
    print(f"batch {found.id} rejected: {found.deliveries} deliveries cancelled")
    return 0
