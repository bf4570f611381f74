"""User accounts: a name, a set of roles, an argon2 password hash, enabled or not.

Every change is written with its audit event in the caller's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select

from router import audit
from router.auth.passwords import hash_password, verify_password
from router.auth.roles import decode, encode, grants, parse_roles
from router.store.inbound import utcnow
from router.store.locks import hold_key
from router.store.schema import api_tokens, sessions, users

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    roles: frozenset[str]
    disabled: bool
    password_set_by: str | None = None  # None: no password, or set before this was kept


def _user(row: Any) -> User:
    return User(row.id, row.name, decode(row.roles), bool(row.disabled), row.password_set_by)


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError("a user name is 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def add_user(
    conn: Connection,
    name: str,
    roles: list[str],
    password: str | None,
    *,
    actor: str,
    reason: str = "",
) -> User:
    """Create an account; ``password`` None makes a token-only account (it cannot sign in).
    ``reason``, when given, is kept in the audit event."""
    check_name(name)
    chosen = parse_roles(roles)
    hold_key(conn, f"users/{name.lower()}")  # "Ada" and "ada" at once: the second sees the first
    clash = conn.scalar(select(users.c.name).where(func.lower(users.c.name) == name.lower()))
    if clash is not None:
        same = "exists" if clash == name else f"exists as {clash!r} (names ignore case)"
        raise ValueError(f"user {name!r} {same}")
    digest = hash_password(password) if password is not None else None
    now = utcnow()
    new_id = conn.execute(
        users.insert().values(
            name=name,
            roles=encode(chosen),
            password_hash=digest,
            disabled=False,
            created_at=now,
            created_by=actor,
            updated_at=now,
            password_set_by=actor if digest is not None else None,
        )
    ).inserted_primary_key[0]
    details: dict[str, Any] = {"roles": sorted(chosen), "password": digest is not None}
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "user-add", f"user:{name}", details)
    return User(new_id, name, chosen, False)


def find_user(conn: Connection, name: str) -> User | None:
    row = conn.execute(select(users).where(users.c.name == name)).first()
    return _user(row) if row else None


def require_user(conn: Connection, name: str) -> User:
    """The user named exactly ``name``; LookupError, naming the account meant when only the
    case differs (a change is never applied to a name the admin did not type)."""
    user = find_user(conn, name)
    if user is not None:
        return user
    alike = conn.scalars(select(users.c.name).where(func.lower(users.c.name) == name.lower()))
    hint = " or ".join(repr(n) for n in alike)
    raise LookupError(f"no user {name!r}" + (f" (did you mean {hint}?)" if hint else ""))


def case_clashes(conn: Connection) -> list[list[str]]:
    """Groups of user names that differ only in case, made before names were compared
    without case. They still sign in apart, but count as one person for four eyes."""
    groups: dict[str, list[str]] = {}
    for name in conn.scalars(select(users.c.name).order_by(users.c.name)):
        groups.setdefault(name.lower(), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def anyone_holds(conn: Connection, role: str) -> bool:
    """Whether an active user holds ``role`` (or admin, which holds every role)."""
    rows = conn.execute(select(users.c.roles).where(users.c.disabled.is_(False)))
    return any(grants(decode(row.roles), role) for row in rows)


def count_users(conn: Connection) -> int:
    return conn.scalar(select(func.count()).select_from(users)) or 0


def list_users(conn: Connection) -> list[dict[str, Any]]:
    """Accounts with their live (unrevoked, unexpired) token count and last sign-in (kept on
    the user by router/auth/sessions.py, so pruning the audit log does not lose it); never
    a hash."""
    now = utcnow()
    live = (
        select(api_tokens.c.user_id, func.count().label("n"))
        .where(api_tokens.c.revoked_at.is_(None))
        .where((api_tokens.c.expires_at.is_(None)) | (api_tokens.c.expires_at > now))
        .group_by(api_tokens.c.user_id)
        .subquery()
    )
    query = (
        select(users, live.c.n).outerjoin(live, live.c.user_id == users.c.id).order_by(users.c.name)
    )
    rows = conn.execute(query).all()
    return [
        {
            "id": r.id,
            "name": r.name,
            "roles": sorted(decode(r.roles)),
            "disabled": bool(r.disabled),
            "password": r.password_hash is not None,
            "tokens": r.n or 0,
            "created_at": r.created_at,
            "created_by": r.created_by,
            "last_sign_in_at": r.last_sign_in_at,
        }
        for r in rows
    ]


def disable_user(conn: Connection, name: str, *, actor: str, reason: str = "") -> User:
    """Disable the account, end its sessions and revoke its tokens (enabling it again does
    not bring them back). The last enabled admin cannot be disabled: nobody could then
    manage users. ``reason``, when given, is kept in the audit event."""
    user = require_user(conn, name)
    if not user.disabled:
        keep_an_admin(conn, user, frozenset())
    conn.execute(
        users.update().where(users.c.id == user.id).values(disabled=True, updated_at=utcnow())
    )
    conn.execute(delete(sessions).where(sessions.c.user_id == user.id))
    revoked = revoke_tokens(conn, user.id, actor=actor, keep=lambda _: False)
    details: dict[str, Any] = {"tokens_revoked": revoked}
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "user-disable", f"user:{name}", details)
    return User(user.id, user.name, user.roles, True)


def revoke_tokens(
    conn: Connection, user_id: int, *, actor: str, keep: Callable[[frozenset[str]], bool]
) -> list[int]:
    """Revoke the user's live tokens whose roles ``keep`` refuses; their ids, for the audit.
    Revoked, not merely unusable, so that a later change (re-enabling the user, granting a
    role again) does not bring back a credential nobody remembers handing out."""
    t = api_tokens.c
    now = utcnow()
    live = conn.execute(
        select(t.id, t.roles)
        .where(t.user_id == user_id, t.revoked_at.is_(None))
        .where(t.expires_at.is_(None) | (t.expires_at > now))
        .order_by(t.id)
    )
    doomed = [row.id for row in live if not keep(decode(row.roles))]
    if doomed:
        conn.execute(
            api_tokens.update().where(t.id.in_(doomed)).values(revoked_at=now, revoked_by=actor)
        )
    return doomed


def keep_an_admin(conn: Connection, user: User, roles: frozenset[str]) -> None:
    """ValueError when ``user``, enabled and an admin, would leave no enabled admin by
    holding only ``roles`` (or being disabled: none). Two admins taking it from each other
    at once take turns on a lock, so the second sees the first's change."""
    if "admin" not in user.roles or "admin" in roles or user.disabled:
        return
    hold_key(conn, "users/admins")
    others = conn.scalars(
        select(users.c.roles).where(users.c.disabled.is_(False), users.c.id != user.id)
    )
    if not any("admin" in decode(held) for held in others):
        raise ValueError(
            f"{user.name!r} is the only enabled admin: make another user an admin first"
        )


def check_password(conn: Connection, name: str, password: str) -> tuple[User | None, str]:
    """The user when the password is right, else None and why (never the password)."""
    row = conn.execute(select(users).where(users.c.name == name)).first()
    if not verify_password(row.password_hash if row else None, password):
        return None, "unknown user" if row is None else "wrong password"
    if row.disabled:
        return None, "disabled"
    return _user(row), "ok"
