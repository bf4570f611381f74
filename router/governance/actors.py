"""Who may take a governance action: an active user holding the role (DESIGN.md §7).

The rule lives here, beside the actions, so that the CLI's ``--actor`` is held to it as
well as the API and the console (which also check the caller's session or token).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from router import audit
from router.auth.roles import decode, grants
from router.auth.users import count_users
from router.governance.models import FourEyesViolation, RoleRequired
from router.store.database import Store
from router.store.schema import users


def person(name: str) -> str:
    """Who ``name`` is for the four-eyes rules: user names are unique without regard to
    case, so ``Ada`` and ``ada`` are one person (also in a store made before that rule)."""
    return name.lower()


def require_role(conn: Connection, actor: str, *roles: str) -> None:
    """Raise ``RoleRequired`` unless ``actor`` is an enabled user with one of ``roles``."""
    row = conn.execute(select(users.c.roles, users.c.disabled).where(users.c.name == actor)).first()
    if row is None or row.disabled:
        raise RoleRequired(f"{actor!r} is not an active user")
    if not any(grants(decode(row.roles), role) for role in roles):
        raise RoleRequired(f"{actor!r} needs the {' or '.join(roles)} role")


def require_role_once_users_exist(conn: Connection, actor: str, *roles: str) -> None:
    """``require_role`` for a name claimed on the command line (``--actor``). While the
    store has no users at all (a new install run from its files) nobody could hold the role,
    so any name passes; the audit keeps the OS user beside it (``audit.run_by``)."""
    if count_users(conn):
        require_role(conn, actor, *roles)


def credential_maker_among(actor: str, made_by: str | None, people: Iterable[str]) -> str | None:
    """Which of ``people`` (an author, a requester) made the credential ``actor`` acts with,
    or None. Whoever made a credential for someone else can act with it: an approval made
    with it is theirs, not ``actor``'s. ``made_by`` None (not known) names nobody."""
    if made_by is None or person(made_by) == person(actor):
        return None
    return next((name for name in people if person(name) == person(made_by)), None)


def refuse(
    store: Store, actor: str, action: str, target: str, details: dict[str, Any], message: str
) -> FourEyesViolation:
    """Audit a refused approval in a transaction of its own (the action's is rolled back) and
    return the error to raise."""
    with store.begin() as conn:
        audit.append(conn, actor, action, target, {**details, "refused": message})
    return FourEyesViolation(message)


def made_by_author(actor: str, maker: str, work: str) -> str:
    """Why an approval with a credential ``maker`` made is refused, and how to put it right."""
    return (
        f"{actor} acts with a credential {maker} made (a token {maker} issued or a "
        f"password {maker} set), and {maker} {work}: it cannot approve that. {actor} must set "
        "their own password and sign in again, or use a token a third person issued"
    )
