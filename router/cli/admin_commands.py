"""CLI commands ``channel`` (list, pause, resume) and ``prune``."""

from __future__ import annotations

import argparse
import sys

from router.cli.commands import acting
from router.cli.output import (
    CommandError,
    add_json,
    engine_config,
    open_store,
    print_json,
    print_table,
)
from router.config import load_channels


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("channel", help="channel state: list, pause, resume")
    actions = p.add_subparsers(dest="channel_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="channels with backlog and queue counts")
    add_json(listing)
    listing.set_defaults(handler=channel_list)
    for name, paused in (("pause", True), ("resume", False)):
        a = actions.add_parser(name, help=f"{name} processing (messages are still received)")
        a.add_argument("name")
        a.add_argument("--reason", default="", help="why (kept in the audit log)")
        a.add_argument("--actor", help="who is doing it (default: the OS user)")
        a.set_defaults(handler=channel_switch, paused=paused)

    p = sub.add_parser(
        "prune", help="remove finished messages older than their channel's retention.keep"
    )
    p.add_argument("--channel", action="append", help="only this channel (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="count what would go; change nothing")
    p.add_argument("--actor", help="who is doing it (default: the OS user)")
    add_json(p)
    p.set_defaults(handler=prune)


def _channel_names(args: argparse.Namespace) -> list[str]:
    return sorted(load_channels(engine_config(args).channels))


def channel_list(args: argparse.Namespace) -> int:
    """The store's figures, and the revision each channel runs on this host's engine (its
    ``/health``), where an older one than the newest deployed (a fallback) shows."""
    from router.channel_control import overview
    from router.cli.running_node import health_url, running_channels, running_summary

    rows = overview(open_store(args), _channel_names(args))
    url = health_url(engine_config(args))
    running = running_channels(url) if url else None
    for row in rows:
        row["running"] = None if running is None else running.get(row["channel"])
    if running is None:
        where = f"no engine answers at {url}" if url else "http.port is 0 (chosen at start)"
        print(f"{where}: the revision each channel runs is not shown", file=sys.stderr)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            row["running"] = running_summary(row["running"])
        columns = [
            "channel",
            "paused",
            "running",
            "unprocessed",
            "queued",
            "held",
            "failed",
            "cancelled",
        ]
        print_table(rows, [*columns, "changed_by"])
    return 0


def channel_switch(args: argparse.Namespace) -> int:
    from router.channel_control import set_paused

    if args.name not in _channel_names(args):
        raise CommandError(f"no channel named {args.name!r}")
    store = open_store(args)
    who = acting(args, store, "support")
    set_paused(store, args.name, args.paused, actor=who, reason=args.reason)
    print(f"{args.name} {'paused' if args.paused else 'resumed'}")
    return 0


def prune(args: argparse.Namespace) -> int:
    from router.governance.deploy import running_channels
    from router.retention import Pruner, pruning_lock

    config = engine_config(args)
    store = open_store(args)
    who = acting(args, store, "admin")
    kept = {n: c for n, c in running_channels(store, config).items() if c.retention is not None}
    for name in args.channel or []:
        if name not in kept:
            raise CommandError(f"no channel named {name!r} with a retention policy")
    if not kept:
        # An empty table would read as "nothing old enough yet".
        print(
            "no channel has a retention policy, so nothing is ever pruned: give a channel "
            "retention: {keep: 90d} (docs/channels.md#retention)",
            file=sys.stderr,
        )
    chosen = [kept[n] for n in sorted(args.channel or kept)]
    pruner = Pruner(store, batch=config.retention.batch, actor=who)
    if args.dry_run:
        results = [pruner.preview(c) for c in chosen]
    else:
        with pruning_lock(store) as leading:
            if not leading:
                raise CommandError("another node is pruning now: try again once it has finished")
            results = [pruner.prune(c) for c in chosen]
    rows = [r.__dict__ | {"dry_run": args.dry_run} for r in results]
    if args.json:
        print_json(rows)
    else:
        columns = ["channel", "before", "messages"]
        print_table(
            rows, columns if args.dry_run else [*columns, "deliveries", "blobs", "archives"]
        )
    return 0
