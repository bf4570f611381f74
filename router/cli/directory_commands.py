"""CLI command ``endpoints`` (list, add, remove): the endpoint directory."""

from __future__ import annotations

import argparse
from typing import Any

from router.cli.commands import acting
from router.cli.output import (
    CommandError,
    add_json,
    engine_config,
    open_store,
    print_json,
    print_table,
)
from router.config import ConfigError
from router.store.database import Store

COLUMNS = ["id", "kind", "identifier", "interaction", "transport", "address", "scope", "origin"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("endpoints", help="the endpoint directory: list, add, remove")
    actions = p.add_subparsers(dest="endpoints_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="endpoints, optionally of one key or interaction")
    listing.add_argument("key", nargs="?", help="ods:<code>, dos:<id> or asid:<asid>")
    listing.add_argument("--interaction")
    listing.add_argument("--transport", choices=["fhir", "mllp", "mesh"])
    add_json(listing)
    listing.set_defaults(handler=endpoints_list)

    add = actions.add_parser("add", help="add an endpoint, or change the one with the same key")
    add.add_argument("key", help="ods:<code>, dos:<id> or asid:<asid>")
    add.add_argument(
        "--interaction",
        action="append",
        required=True,
        help="an interaction (e.g. servicerequest-request); repeat for several",
    )
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--fhir", metavar="URL", help="FHIR base URL")
    where.add_argument("--mllp", metavar="HOST:PORT")
    where.add_argument("--mesh", metavar="MAILBOX")
    add.add_argument("--scope", choices=["addressed", "all"], default="addressed")
    add.add_argument("--name", default="")
    add.add_argument("--actor", help="who is doing it (default: the OS user)")
    add_json(add)
    add.set_defaults(handler=endpoints_add)

    remove = actions.add_parser("remove", help="remove a key's endpoints")
    remove.add_argument("key", help="ods:<code>, dos:<id> or asid:<asid>")
    remove.add_argument("--interaction", help="only this interaction")
    remove.add_argument("--transport", choices=["fhir", "mllp", "mesh"])
    remove.add_argument("--actor", help="who is doing it (default: the OS user)")
    add_json(remove)
    remove.set_defaults(handler=endpoints_remove)


def _seeded(args: argparse.Namespace, store: Store) -> Store:
    """The store with the directory seeded from endpoints.yaml, as the engine seeds it."""
    from router.directory.seeding import seed_from_file

    try:
        seed_from_file(store, engine_config(args).endpoints)
    except ConfigError as exc:
        raise CommandError(f"endpoints file is not valid:\n{exc}", 2) from exc
    return store


def _key(text: str) -> Any:
    from router.directory import parse_key

    try:
        return parse_key(text)
    except ValueError as exc:
        raise CommandError(str(exc), 2) from exc


def endpoints_list(args: argparse.Namespace) -> int:
    from router.directory import list_endpoints

    key = _key(args.key) if args.key else None
    with _seeded(args, open_store(args)).read() as conn:
        rows = list_endpoints(conn, key=key, interaction=args.interaction, transport=args.transport)
    _show(args, rows)
    return 0


def endpoints_add(args: argparse.Namespace) -> int:
    from router.directory import make_endpoint, put_endpoint

    key = _key(args.key)
    transport = next(t for t in ("fhir", "mllp", "mesh") if getattr(args, t))
    try:
        wanted = [
            make_endpoint(
                key, i, transport, getattr(args, transport), scope=args.scope, name=args.name
            )
            for i in args.interaction
        ]
    except ValueError as exc:
        raise CommandError(str(exc), 2) from exc
    store = open_store(args)
    who = acting(args, store, "engineer")  # before the seeding: a refusal records nothing
    with _seeded(args, store).begin() as conn:
        rows = [put_endpoint(conn, endpoint, actor=who) for endpoint in wanted]
    _show(args, rows)
    return 0


def endpoints_remove(args: argparse.Namespace) -> int:
    from router.directory import remove_endpoints

    key = _key(args.key)
    store = open_store(args)
    who = acting(args, store, "engineer")
    with _seeded(args, store).begin() as conn:
        rows = remove_endpoints(
            conn, key, actor=who, interaction=args.interaction, transport=args.transport
        )
    if not rows:
        raise CommandError(f"no endpoint of {key} matches")
    _show(args, rows)
    if not args.json and any(row["origin"] == "config" for row in rows):
        print("note: entries from endpoints.yaml come back on the next start unless removed there")
    return 0


def _show(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if args.json:
        print_json(rows)
    else:
        print_table(rows, COLUMNS)
