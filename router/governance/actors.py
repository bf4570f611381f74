"""Who may take a governance action: an active user holding the role (DESIGN.md §7).

The rule lives here, beside the actions, so that the CLI's ``--actor`` is held to it as
well as the API and the console (which also check the caller's session or token).
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from router.auth.roles import decode, grants
from router.auth.users import count_users
from router.governance.models import RoleRequired
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
