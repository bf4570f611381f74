"""Who acts on the command line when the four-eyes rules count the actor.

``--actor`` is only a claim: anyone with a shell on the engine host could approve a
revision or release a batch "as" someone else with it, so a command whose actor the rules
count (an author, a requester, an approver, a channel's owner) acts with that user's own
credentials, held to the checks the API applies (docs/governance.md): an API token in
``TIE_TOKEN``, or the user's password asked for at a terminal. Without either it is
refused, pointing to the console and the API. The OS user is still kept beside the actor
(``audit.run_by``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import dataclass

from router import audit
from router.auth.passwords import MAX_LENGTH
from router.auth.roles import grants
from router.auth.tokens import token_bearer
from router.auth.users import check_password, count_users
from router.cli.commands import actor
from router.cli.output import CommandError
from router.governance.actors import person
from router.store.database import Store

TOKEN_VARIABLE = "TIE_TOKEN"


@dataclass(frozen=True)
class Credential:
    """The user a command acts as, and who made the credential it proved that with (the
    token's issuer, the password's setter; None: not known), for the four-eyes checks."""

    name: str
    made_by: str | None


def signed_in(args: argparse.Namespace, store: Store, *roles: str) -> Credential:
    """The user whose credential this command presents, holding one of ``roles``; else exit
    1 before anything is recorded. While the store has no users at all (a new install run
    from its files) nobody has a credential, so the claimed ``--actor`` (default: the OS
    user) is taken, as the rules need no person yet; the services still refuse what needs
    a role. A token given then is refused (``_NO_USERS``), as ``token_holder`` refuses it."""
    claimed = getattr(args, "actor", None)
    with store.read() as conn:
        anyone = count_users(conn)
    if not anyone:
        if _presented_token():
            raise CommandError(_NO_USERS)
        return Credential(actor(args), None)
    presented = token_holder(args, store, *roles)
    if presented is not None:
        return presented
    password = ask_password(claimed) if claimed else None
    if claimed is None or password is None:
        raise CommandError(_needs_credentials(claimed, roles))
    credential, held = _by_password(store, claimed, password)
    _held_to(claimed, credential, held, roles, "")
    return credential


def token_holder(args: argparse.Namespace, store: Store, *roles: str) -> Credential | None:
    """The holder of the API token in ``TIE_TOKEN``, held to its roles and to ``--actor``;
    None when the variable is not set. A token given that is not live is refused, never
    passed over for a claimed name: a label-only command (reprocess, pause, ...) records
    whoever the token proves, as the credentialed ones do."""
    token = _presented_token()
    if not token:
        return None
    credential, held = _by_token(store, token)
    scope = " (a token acts with the roles it was given)"
    _held_to(getattr(args, "actor", None), credential, held, roles, scope)
    return credential


def _presented_token() -> str:
    return os.environ.get(TOKEN_VARIABLE, "").strip()


# No token can be valid on a store without users: most likely the command found the wrong
# store (TIE_STORE, --config), which it must not act on as the claimed name instead.
_NO_USERS = (
    f"${TOKEN_VARIABLE} is set, but this store has no users, so no API token is valid on it "
    f"(is it the store you meant?): unset ${TOKEN_VARIABLE} to act as --actor until the "
    "first user is added"
)


def _held_to(
    claimed: str | None,
    credential: Credential,
    held: frozenset[str],
    roles: tuple[str, ...],
    scope: str,
) -> None:
    """Refuse a credential that is not the claimed ``--actor``'s, or lacks ``roles``."""
    if claimed and person(claimed) != person(credential.name):
        raise CommandError(
            f"--actor {claimed} but the credential given is {credential.name}'s: "
            "a command acts as the user whose credential it presents"
        )
    if not any(grants(held, role) for role in roles):
        raise CommandError(f"{credential.name!r} needs the {' or '.join(roles)} role{scope}")


def _by_token(store: Store, token: str) -> tuple[Credential, frozenset[str]]:
    with store.read() as conn:
        bearer = token_bearer(conn, token)
        anyone = bearer is not None or count_users(conn)
    if not anyone:
        raise CommandError(_NO_USERS)
    if bearer is None:
        raise CommandError(
            f"${TOKEN_VARIABLE} is not a live API token (revoked, expired, its user disabled, "
            "or mistyped)"
        )
    return Credential(bearer.name, bearer.issued_by), bearer.roles


def ask_password(name: str) -> str | None:
    """``name``'s password, asked for at a terminal; None when there is none to ask at."""
    if not sys.stdin.isatty():
        return None
    return getpass.getpass(f"password for {name}: ")[: MAX_LENGTH + 1]


def _by_password(store: Store, name: str, password: str) -> tuple[Credential, frozenset[str]]:
    with store.read() as conn:
        user, why = check_password(conn, name, password)
    if user is None:
        with store.begin() as conn:
            audit.append(conn, name, "login-failed", f"user:{name}", {"reason": why, "via": "cli"})
        raise CommandError(f"{name}: wrong password or not an active user")
    return Credential(user.name, user.password_set_by), user.roles


def _needs_credentials(claimed: str | None, roles: tuple[str, ...]) -> str:
    who = claimed or "NAME"
    return (
        f"this command acts as a user with the {' or '.join(roles)} role, and on the command "
        f"line a name is only a claim: give that user's own credential, an API token in "
        f"${TOKEN_VARIABLE} (run.py users token {who} --role ROLE; revoke it after), or "
        f"--actor {who} at a terminal to be asked for {who}'s password; or use the console "
        "or the API"
    )
