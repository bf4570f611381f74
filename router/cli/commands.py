"""CLI commands: serve, check, send, messages, show and db."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.cli import db_commands
from router.cli.filters import add_filters, search_filter
from router.cli.output import (
    CommandError,
    add_json,
    config_path,
    engine_config,
    message_ref,
    open_store,
    positive_seconds,
    print_json,
    print_table,
    printable,
)
from router.config import ConfigError, load_channels
from router.hl7v2.charset import codec_for_bytes
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import read_header
from router.store.database import Store
from router.store.queries import DELIVERY_STATUSES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the engine")
    p.set_defaults(handler=serve)

    p = sub.add_parser(
        "check", help="validate engine.yaml, every channel and its mappings; run channel tests"
    )
    p.add_argument("channels", nargs="*", help="run only these channels' test cases")
    p.add_argument("--cases", type=Path, help="channel test folder (default: tests/channels)")
    p.add_argument(
        "--update", action="store_true", help="rewrite the golden files with today's outputs"
    )
    p.set_defaults(handler=check)

    p = sub.add_parser("send", help="send message files to a channel over its own source protocol")
    p.add_argument("channel")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="seconds to wait for each ACK"
    )
    p.add_argument(
        "--cert",
        type=Path,
        help="client certificate (PEM) for a TLS source that requires one (mutual TLS)",
    )
    p.add_argument("--key", type=Path, help="the client certificate's key, if not in --cert")
    add_json(p)
    p.set_defaults(handler=send)

    p = sub.add_parser("messages", help="search messages")
    add_filters(p)
    p.add_argument(
        "--delivery-status",
        choices=DELIVERY_STATUSES,
        help="with a delivery in this status, e.g. failed (the message itself is processed)",
    )
    p.add_argument("--actor", help="who is searching content with --text (default: the OS user)")
    add_json(p)
    p.set_defaults(handler=messages)

    p = sub.add_parser("show", help="a message with its deliveries, attempts and timeline")
    p.add_argument("id", type=message_ref, help="message number, UUID or urn:tie:message:<uuid>")
    p.add_argument("--actor", help="who is looking (default: the OS user)")
    add_json(p)
    p.set_defaults(handler=show)

    p = sub.add_parser("db", help="database maintenance")
    db = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db.add_parser("upgrade", help="apply schema migrations")
    up.set_defaults(handler=db_upgrade)
    db_commands.register(db)


def serve(args: argparse.Namespace) -> int:
    from router.connectors.mllp.listener import ListenError
    from router.engine import Engine
    from router.log_format import configure
    from router.store.presence import StoreInUse

    config = engine_config(args)
    configure(config.logging, verbose=args.verbose)
    try:
        engine = Engine(config)
    except ConfigError as exc:
        raise CommandError(str(exc), 2) from exc
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(engine.serve_forever())
    except ListenError as exc:
        raise CommandError(exc.strerror or str(exc)) from exc
    except StoreInUse as exc:
        raise CommandError(str(exc)) from exc
    return 0


def check(args: argparse.Namespace) -> int:
    from router.cli.checking import expired_or_expiring, trust_running_out
    from router.directory.seeding import read_endpoints
    from router.engine import compile_channels

    config = engine_config(args)
    try:
        channels = load_channels(config.channels)
        compile_channels(config, channels, disabled=True)
        read_endpoints(config.endpoints)
        now, config_file = datetime.now(UTC), config_path(args).resolve()
        expiring = expired_or_expiring(config, config_file, channels, now)
        expiring += trust_running_out(config, config_file, channels, now)
    except ConfigError as exc:
        raise CommandError(f"configuration is not valid:\n{exc}", 2) from exc
    # A mistyped name or folder would run no case and pass: "0 case(s) run", exit 0.
    unknown = [name for name in args.channels if name not in channels]
    if unknown:
        raise CommandError(f"no channel named {', '.join(map(repr, unknown))}", 2)
    if args.cases is not None and not args.cases.is_dir():
        raise CommandError(f"--cases {args.cases}: not a folder", 2)
    for name, channel in sorted(channels.items()):
        routes = ", ".join(f"{d}({c.kind})" for d, c in channel.destinations.items()) or "none"
        print(f"ok  {name}: source {channel.source.kind}, destinations {routes}")
    print(f"{len(channels)} channel(s) valid")
    from router.cli.checking import (
        default_cases,
        open_to_anyone,
        run_channel_tests,
        senders_unchecked_or_unknown,
    )

    for warning in [*expiring, *open_to_anyone(config, channels)]:
        print(warning)
    for warning in senders_unchecked_or_unknown(config, channels):
        print(warning)
    from router.cli.governed_check import governed_differences

    for line in governed_differences(config, channels):
        print(line)

    root = args.cases or default_cases(config)
    failed = run_channel_tests(config, channels, root, only=args.channels, rewrite=args.update)
    return 1 if failed else 0


def send(args: argparse.Namespace) -> int:
    from router.cli.sending import send_files

    config = engine_config(args)
    channels = load_channels(config.channels)
    channel = channels.get(args.channel)
    if channel is None:
        raise CommandError(f"no channel named {args.channel!r}")
    results = send_files(
        config, channel, args.files, timeout=args.timeout, client=(args.cert, args.key)
    )
    if args.json:
        print_json(results)
    else:
        print_table(results, ["file", "control_id", "ack", "text"])
    return 0 if all(r["ack"] in ("AA", "CA", "stored") for r in results) else 1


def messages(args: argparse.Namespace) -> int:
    from router import audit
    from router.store.queries import search, with_delivery_counts

    store = open_store(args)
    f = replace(search_filter(args), delivery_status=args.delivery_status)
    # A search of content is audited, as a view of it is, and needs the same role.
    who = acting(args, store, "support") if f.text else None
    with store.begin() if f.text else store.read() as conn:
        rows = with_delivery_counts(conn, search(conn, f))
        if who is not None:
            found = [row["uuid"] for row in rows]
            audit.searched_content(conn, who, f.text, found, via="cli")
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            row["deliveries"] = delivery_summary(row["deliveries"])
        columns = ["id", "received_at", "channel", "status", "message_type", "control_id"]
        print_table(rows, [*columns, "deliveries", "error"])
    return 0


def delivery_summary(counts: dict[str, int]) -> str | None:
    """``failed 1, sent 2``: trouble first, as the console lists them."""
    return ", ".join(f"{s} {counts[s]}" for s in DELIVERY_STATUSES if counts.get(s)) or None


def show(args: argparse.Namespace) -> int:
    from router import audit

    store = open_store(args)
    who = acting(args, store, "support")
    with store.begin() as conn:
        detail = audit.viewed_message(conn, args.id, store.blobs, actor=who, via="cli")
        if detail is None:
            raise CommandError(f"no message {args.id}")
    if args.json:
        print_json(detail)
    else:
        _print_detail(detail)
    return 0


def actor(args: argparse.Namespace) -> str:
    return getattr(args, "actor", None) or os_user()


def acting(args: argparse.Namespace, store: Store, *roles: str) -> str:
    """Who runs a label-only command: the holder of the API token in ``TIE_TOKEN`` when one
    is given (router/cli/credentials.py), else ``actor(args)`` held to the rule an API token
    is held to, as soon as the store has users: an active one with one of ``roles``; else
    exit 1 before anything is recorded. A claimed name would otherwise let anyone act as
    anyone in the audit log."""
    from router.cli.credentials import token_holder
    from router.governance.actors import require_role_once_users_exist
    from router.governance.models import RoleRequired

    holder = token_holder(args, store, *roles)
    if holder is not None:
        return holder.name
    name = actor(args)
    with store.read() as conn:
        try:
            require_role_once_users_exist(conn, name, *roles)
        except RoleRequired as exc:
            default = "" if getattr(args, "actor", None) else " (no --actor: your OS user)"
            raise CommandError(
                f"{exc}{default}; give --actor NAME, an active user with the "
                f"{' or '.join(roles)} role (run.py users list)"
            ) from exc
    return name


def os_user() -> str:
    """Who runs this command, ``user@host``: kept beside a claimed ``--actor``."""
    import getpass

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:
        return "unknown"


def _next_attempt(delivery: dict[str, Any]) -> str:
    """When a retrying delivery is tried again: wait for it, or look at the receiver now."""
    due = delivery.get("next_attempt_at")
    if delivery["status"] != "retrying" or due is None:
        return ""
    due = due.astimezone(UTC) if due.tzinfo else due
    return f", next attempt {due:%Y-%m-%d %H:%M:%S} UTC"


def _print_detail(d: dict[str, Any]) -> None:
    """The message, its deliveries and timeline, with the content's control characters
    escaped (``printable``)."""
    _say(f"message {d['id']}  urn:tie:message:{d['uuid']}")
    for key in (
        "channel",
        "status",
        "received_at",
        "message_type",
        "control_id",
        "sender",
        "error",
    ):
        if d.get(key) is not None:
            _say(f"  {key:<13} {d[key]}")
    for key, value in _source_lines(d.get("source") or {}):
        _say(f"  {key:<13} {value}")
    if d.get("revision") is not None:
        # Which configuration settled it: run.py channel revisions CHANNEL shows its text.
        _say(f"  {'revision':<13} {d['channel']} #{d['revision']}")
    _say("\n--- raw ---")
    _say(_content_text(d).replace("\r", "\n").rstrip())
    if d["raw_truncated"]:
        _say(f"[the first {len(d['raw']):,} of {d['size']:,} bytes]")
    _say("\n--- deliveries ---")
    for delivery in d["deliveries"]:
        _say(
            f"  #{delivery['id']} {delivery['destination']}: {delivery['status']}, "
            f"{delivery['attempts']} attempt(s)"
            + _next_attempt(delivery)
            + "".join(f", resent → #{c}" for c in delivery["resent_as"])
            + (f", resent from #{delivery['resent_from']}" if delivery["resent_from"] else "")
            + (f", last error: {delivery['last_error']}" if delivery["last_error"] else "")
        )
        for a in delivery["attempt_log"]:
            response = (a["response"] or b"").decode("utf-8", errors="replace").replace("\r", " | ")
            _say(
                f"    attempt {a['number']} {a['started_at']:%Y-%m-%d %H:%M:%S} {a['outcome']} "
                f"{a['duration_ms']:.1f} ms {a['error'] or ''} {response[:120]}".rstrip()
            )
    if d["correlations"]:
        _say("\n--- correlation keys ---")
        for k in d["correlations"]:
            _say(f"  {k['key']}: {k['value']}")
    if d.get("flags"):
        _say("\n--- flags ---")
        for flag in d["flags"]:
            _say(f"  {flag}")
    if len(d["timeline"]) > 1:
        _say("\n--- timeline ---")
        for line in timeline_lines(d["timeline"]):
            _say(line)


def _source_lines(source: dict[str, Any]) -> list[tuple[str, str]]:
    """Where the message came from: the peer's address, and over TLS the version and the
    verified client certificate (which sending system delivered it)."""
    lines = []
    if source.get("remote"):
        over = f" over {source['tls']}" if source.get("tls") else ""
        lines.append(("from", f"{source.get('protocol', '')} {source['remote']}{over}".strip()))
    for key, label in _CLIENT_FIELDS:
        if source.get(key):
            lines.append((label, str(source[key])))
    return lines


_CLIENT_FIELDS = (
    ("client_subject", "client cert"),
    ("client_issuer", "  issuer"),
    ("client_serial", "  serial"),
    ("client_sha256", "  sha256"),
)


def _say(line: str) -> None:
    print(printable(line, lines=True))


def _content_text(d: dict[str, Any]) -> str:
    """The stored content as text: HL7 v2 in its own codec (MSH-18), anything else as UTF-8."""
    raw = d["raw"]
    if d.get("content_type") == "hl7v2":
        with contextlib.suppress(Er7Error):
            return raw.decode(codec_for_bytes(read_header(raw).charset, raw), errors="replace")
    return raw.decode("utf-8", errors="replace")


def timeline_lines(timeline: list[dict[str, Any]]) -> list[str]:
    """Each message of the conversation, then what became of each of its deliveries."""
    lines = []
    for t in timeline:
        flags = f" [{', '.join(t['flags'])}]" if t.get("flags") else ""
        lines.append(
            f"  {t['received_at']:%Y-%m-%d %H:%M:%S} #{t['id']} {t['channel']} "
            f"{t['message_type'] or ''} received, {t['status']}{flags}"
        )
        for x in t.get("deliveries", []):
            at = f"{x['attempted_at']:%Y-%m-%d %H:%M:%S}" if x["attempted_at"] else " " * 19
            parts = [f"  {at}   -> {x['destination']} {x['status']}"]
            if x["address"]:
                parts.append(f"to {x['address']}")
            if x["answer"]:
                parts.append(f"answer {x['answer']}")
            if x["last_error"] and x["status"] != "sent":
                parts.append(f"({x['last_error']})")
            lines.append(" ".join(parts))
    return lines


def db_upgrade(args: argparse.Namespace) -> int:
    from router.store.migrate import upgrade
    from router.store.opening import open_store as open_unmigrated

    store = open_unmigrated(engine_config(args))
    try:
        applied = upgrade(store)
    finally:
        store.dispose()
    if not applied:
        print("database is at the latest schema: nothing to do")
        return 0
    print(f"applied {len(applied)} migration(s):")
    width = max(len(a.revision) for a in applied)
    for a in applied:
        print(f"  {a.revision:<{width}}  {a.doc}")
    print("database is at the latest schema")
    return 0
