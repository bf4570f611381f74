"""CLI command ``audit``: ``list`` the events (who did what to which, and why) and ``verify``
the hash chain.

``list`` reads the store as ``messages`` does and writes nothing: reading the log is not
itself audited (nor is it through the API or the console), and a command that records
nothing claims no ``--actor``, so it is held to no role (docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.cli.filters import when
from router.cli.output import (
    CommandError,
    add_json,
    message_ref,
    open_store,
    positive_int,
    print_json,
    print_table,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

DEFAULT_LIMIT = 50
# What a table line shows of an event's details in columns of its own; the rest is ``details``.
_OWN_COLUMNS = ("os_user", "reason", "via")
COLUMNS = ("id", "at", "actor", "os_user", "action", "target", "reason", "via", "details")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="the hash-chained audit log: list events, verify the chain")
    actions = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="events, newest first: who did what, and why")
    group = listing.add_argument_group("search")
    group.add_argument("--actor", help="who acted (a user, an OS user user@host, engine:NODE)")
    group.add_argument(
        "--action", help="e.g. resend, view, revision.approve; ending in *, a prefix: 'resend*'"
    )
    group.add_argument(
        "--target",
        help="e.g. urn:tie:message:<uuid>, channel:NAME, user:NAME; ending in *, a prefix",
    )
    group.add_argument(
        "--message",
        type=message_ref,
        help="events on this message (number, UUID or urn:tie:message:<uuid>)",
    )
    group.add_argument("--since", type=when, help="ISO time, or an age such as 12h")
    group.add_argument("--until", type=when, help="ISO time, or an age such as 30m")
    group.add_argument(
        "--limit", type=positive_int, help=f"at most this many (default {DEFAULT_LIMIT})"
    )
    group.add_argument(
        "--before", type=positive_int, dest="before_id", help="page cursor: events below this id"
    )
    add_json(listing)
    listing.set_defaults(handler=audit_list)

    verify = actions.add_parser("verify", help="check the chain; name the first broken event")
    verify.add_argument(
        "--anchor",
        type=Path,
        help="a file kept outside the store: the newest event of the last intact verify, "
        "which must still be there (else events were removed from the end); rewritten on success",
    )
    add_json(verify)
    verify.set_defaults(handler=audit_verify)


def audit_list(args: argparse.Namespace) -> int:
    from router import audit

    if args.message and args.target:
        raise CommandError("give --message or --target, not both")
    limit = args.limit or DEFAULT_LIMIT
    store = open_store(args)
    with store.read() as conn:
        target = _message_urn(conn, args.message) if args.message else args.target
        query = audit.EventFilter(
            args.actor, args.action, target, args.since, args.until, args.before_id, limit
        )
        rows = audit.events(conn, query)
    if args.json:
        print_json(rows)
    elif rows:
        print_table([table_row(r) for r in rows], COLUMNS)
    else:
        print("no events match")
    if len(rows) == limit:
        print(
            f"more: add --before {rows[-1]['id']} for the next {limit}, or a larger --limit",
            file=sys.stderr,
        )
    return 0


def _message_urn(conn: Connection, ref: str) -> str:
    """The target of message ``ref``'s events: operators know a message by its number."""
    from sqlalchemy import select

    from router.store.queries import find_message_id
    from router.store.schema import messages

    message_id = find_message_id(conn, ref)
    if message_id is None:
        raise CommandError(f"no message {ref}")
    uuid = conn.scalar(select(messages.c.uuid).where(messages.c.id == message_id))
    return f"urn:tie:message:{uuid}"


def table_row(event: dict[str, Any]) -> dict[str, Any]:
    """An event as one line: the OS user who ran the command beside the actor it claimed,
    how (``via``) and why (``reason``) in columns of their own, the other details as
    ``key=value`` (``--json`` gives them whole)."""
    details = dict(event["details"])
    own = {name: details.pop(name, None) for name in _OWN_COLUMNS}
    rest = ", ".join(f"{key}={_value(value)}" for key, value in details.items())
    return {**event, **own, "details": rest or None}


def _value(value: Any) -> str:
    if isinstance(value, list):
        return f"[{len(value)}]" if len(value) > 3 else "[" + " ".join(map(str, value)) + "]"
    return str(value)


def audit_verify(args: argparse.Namespace) -> int:
    from router.audit import read_anchor, verify, write_anchor

    try:
        anchor = read_anchor(args.anchor) if args.anchor else None
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    verdict = verify(open_store(args), anchor)
    if verdict.ok and args.anchor and verdict.head is not None:
        write_anchor(args.anchor, verdict.head)
    if args.json:
        print_json(asdict(verdict))
    elif verdict.ok:
        print(f"audit chain intact: {verdict.events} event(s)")
    else:
        print(f"audit chain BROKEN at event {verdict.broken_id}: {verdict.reason}")
    return 0 if verdict.ok else 1
