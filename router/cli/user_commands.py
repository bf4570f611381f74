"""CLI command ``users``: add, list, roles, password, disable, enable, and API tokens.

A password is read from a prompt (twice) or, for scripts, from standard input
with ``--password-stdin``; never from the command line, where it would be seen in
the process list and the shell history. A token is printed once and only its
hash is kept.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime, timedelta
from typing import Any

from router.cli.commands import acting
from router.cli.credentials import signed_in
from router.cli.output import (
    CommandError,
    add_json,
    open_store,
    positive_int,
    print_json,
    print_table,
)
from router.store.inbound import utcnow
from router.units import parse_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("users", help="console users, roles and API tokens")
    actions = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="create a user (password from a prompt or stdin)")
    add.add_argument("name")
    add.add_argument("--role", action="append", required=True, dest="roles", help="repeatable")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    secret.add_argument(
        "--no-password", action="store_true", help="a token-only account (cannot sign in)"
    )
    add.add_argument("--reason", default="", help="why: kept in the audit log")
    _actor(add)
    add.set_defaults(handler=users_add)

    listing = actions.add_parser("list", help="users with their roles and live token counts")
    add_json(listing)
    listing.set_defaults(handler=users_list)

    roles = actions.add_parser(
        "roles", help="add or remove a user's roles; takes effect on their next request"
    )
    roles.add_argument("name")
    roles.add_argument("--add", action="append", default=[], help="a role to give; repeatable")
    roles.add_argument(
        "--remove", action="append", default=[], help="a role to take away; repeatable"
    )
    roles.add_argument("--reason", required=True, help="why: kept in the audit log")
    _actor(roles)
    roles.set_defaults(handler=users_roles)

    password = actions.add_parser(
        "password", help="set a user's password (a reset); ends all their sessions"
    )
    password.add_argument("name")
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    password.add_argument("--reason", default="", help="why: kept in the audit log")
    _actor(password)
    password.set_defaults(handler=users_password, no_password=False)

    disable = actions.add_parser("disable", help="disable a user; sessions end, tokens revoked")
    disable.add_argument("name")
    disable.add_argument("--reason", default="", help="why: kept in the audit log")
    _actor(disable)
    disable.set_defaults(handler=users_disable)

    enable = actions.add_parser(
        "enable", help="let a disabled user sign in again (their old tokens stay revoked)"
    )
    enable.add_argument("name")
    enable.add_argument("--reason", required=True, help="why: kept in the audit log")
    _actor(enable)
    enable.set_defaults(handler=users_enable)

    token = actions.add_parser(
        "token",
        help="issue an API token (printed once); or revoke ID; or rotate ID; or label ID",
    )
    token.add_argument("name", help="the user the token acts as; or `revoke`, `rotate` or `label`")
    token.add_argument(
        "id", nargs="?", type=positive_int, help="with revoke, rotate or label: the token's id"
    )
    token.add_argument("--role", action="append", dest="roles", help="repeatable")
    token.add_argument(
        "--expires",
        help="lifetime, e.g. 90d or 12h (default: until revoked; rotate: the old one's)",
    )
    token.add_argument(
        "--reason", default="", help="issue, rotate, label or revoke: why, kept in the audit log"
    )
    token.add_argument(
        "--label",
        help="issue or label: a name for it, shown in listings, e.g. 'PAS live' "
        "(label: empty for none; rotate: the old one's)",
    )
    token.add_argument(
        "--overlap",
        default="24h",
        help="rotate: how long the old token keeps working beside the new (default 24h)",
    )
    _actor(token)
    token.set_defaults(handler=users_token)

    tokens = actions.add_parser("tokens", help="list API tokens (never their values)")
    tokens.add_argument("name", nargs="?", help="only this user's")
    tokens.add_argument(
        "--expiring", metavar="WITHIN", help="only live tokens expiring within, e.g. 30d"
    )
    add_json(tokens)
    tokens.set_defaults(handler=users_tokens)


def _actor(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--actor",
        help="the admin acting: asked for their password at a terminal, or give their API "
        "token in $TIE_TOKEN (disable and token revoke: a name, default the OS user)",
    )


def _password(args: argparse.Namespace) -> str | None:
    if args.no_password:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        # getpass would read the pipe with the password echoed, or fail with a traceback.
        token_only = ", or add a token-only user with --no-password"
        raise CommandError(
            "no terminal to ask for the password: pipe it in with --password-stdin"
            + (token_only if args.users_command == "add" else "")
        )
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise CommandError("the passwords differ")
    return first


def users_add(args: argparse.Namespace) -> int:
    from router.auth.users import add_user

    store = open_store(args)
    who = signed_in(args, store, "admin").name
    password = _password(args)
    try:
        with store.begin() as conn:
            user = add_user(conn, args.name, args.roles, password, actor=who, reason=args.reason)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(f"added {user.name} ({', '.join(sorted(user.roles))})")
    return 0


def users_list(args: argparse.Namespace) -> int:
    from router.auth.users import list_users

    with open_store(args).read() as conn:
        rows = list_users(conn)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            row["roles"] = " ".join(row["roles"])
        columns = ["name", "roles", "disabled", "password", "tokens", "created_at"]
        print_table(rows, [*columns, "last_sign_in_at"])
    return 0


def users_roles(args: argparse.Namespace) -> int:
    from router.auth.accounts import change_roles

    store = open_store(args)
    who = signed_in(args, store, "admin").name
    try:
        with store.begin() as conn:
            change = change_roles(
                conn, args.name, add=args.add, remove=args.remove, actor=who, reason=args.reason
            )
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    held = " ".join(sorted(change.user.roles))
    if not change.added and not change.removed:
        print(f"{change.user.name} already holds {held}: nothing changed")
        return 0
    print(f"{change.user.name}: {held}")
    if change.tokens_revoked:
        ids = ", ".join(str(i) for i in change.tokens_revoked)
        print(f"revoked token(s) {ids}: they held no role {change.user.name} still has")
    return 0


def users_password(args: argparse.Namespace) -> int:
    from router.auth.accounts import set_password

    store = open_store(args)
    who = signed_in(args, store, "admin").name
    password = _password(args) or ""
    try:
        with store.begin() as conn:
            user = set_password(conn, args.name, password, actor=who, reason=args.reason)
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"password set for {user.name}; their sessions are ended")
    return 0


def users_disable(args: argparse.Namespace) -> int:
    from router.auth.users import disable_user

    store = open_store(args)
    who = acting(args, store, "admin")
    try:
        with store.begin() as conn:
            disable_user(conn, args.name, actor=who, reason=args.reason)
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"disabled {args.name}")
    return 0


def users_enable(args: argparse.Namespace) -> int:
    from router.auth.accounts import enable_user

    store = open_store(args)
    who = signed_in(args, store, "admin").name
    try:
        with store.begin() as conn:
            user = enable_user(conn, args.name, actor=who, reason=args.reason)
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"enabled {user.name} ({', '.join(sorted(user.roles))}); issue new tokens if needed")
    return 0


def users_token(args: argparse.Namespace) -> int:
    from router.auth.tokens import issue_token, revoke_token

    store = open_store(args)
    # Revoking takes power away and a label is a name, and ``--actor`` labels them; issuing
    # or rotating a token makes a credential, which the four-eyes rules judge by its maker:
    # no claim.
    if args.name in ("revoke", "label"):
        who = acting(args, store, "admin")
    else:
        who = signed_in(args, store, "admin").name
    if args.name == "revoke":
        if args.id is None:
            raise CommandError("give the token's id: users token revoke ID")
        try:
            with store.begin() as conn:
                revoke_token(conn, args.id, actor=who, reason=args.reason)
        except LookupError as exc:
            raise CommandError(str(exc)) from exc
        print(f"revoked token {args.id}")
        return 0
    if args.name == "label":
        return _relabel(args, store, who)
    expires = utcnow() + _duration(args.expires, "--expires") if args.expires else None
    if args.name == "rotate":
        return _rotate(args, store, who, expires)
    if not args.roles:
        raise CommandError("give at least one --role for the token")
    try:
        with store.begin() as conn:
            token_id, token = issue_token(
                conn,
                args.name,
                args.roles,
                actor=who,
                expires_at=expires,
                reason=args.reason,
                label=args.label,
            )
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"token {token_id} for {args.name}; shown once, keep it in a secret store:")
    print(token)
    return 0


def _duration(value: str, option: str) -> timedelta:
    try:
        return timedelta(seconds=parse_duration(value))
    except ValueError as exc:
        raise CommandError(f"{option}: {exc}") from exc


def _relabel(args: argparse.Namespace, store: Any, who: str) -> int:
    from router.auth.tokens import relabel_token

    if args.id is None or args.label is None:
        raise CommandError(
            "give the token's id and its new label: users token label ID --label TEXT"
        )
    try:
        with store.begin() as conn:
            label = relabel_token(conn, args.id, args.label, actor=who, reason=args.reason)
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    print(f"token {args.id} is labelled {label!r}" if label else f"token {args.id} has no label")
    return 0


def _rotate(args: argparse.Namespace, store: Any, who: str, expires: datetime | None) -> int:
    from router.auth.tokens import rotate_token

    if args.id is None:
        raise CommandError("give the token's id: users token rotate ID")
    if args.roles:
        raise CommandError("a rotated token keeps its roles: leave out --role")
    if args.label is not None:
        raise CommandError("a rotated token keeps its label: leave out --label")
    overlap = _duration(args.overlap, "--overlap")
    try:
        with store.begin() as conn:
            done = rotate_token(
                conn, args.id, actor=who, overlap=overlap, expires_at=expires, reason=args.reason
            )
    except (LookupError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    until = f"{done.old_expires_at:%Y-%m-%d %H:%M:%S} UTC"
    print(f"token {done.new_id} for {done.user}; token {args.id} works until {until}, then expires")
    print("the new token, shown once, keep it in a secret store:")
    print(done.token)
    return 0


def users_tokens(args: argparse.Namespace) -> int:
    from router.auth.tokens import list_tokens

    within = _duration(args.expiring, "--expiring") if args.expiring else None
    with open_store(args).read() as conn:
        rows = list_tokens(conn, args.name, expiring_within=within)
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            row["roles"] = " ".join(row["roles"])
        columns = ["id", "user", "label", "roles", "state", "created_at", "expires_at"]
        print_table(rows, [*columns, "last_used_at", "revoked_at"])
    return 0
