"""Changing an existing account: its roles, enabling it again, its password.

Each change is written with its audit event (who, what, why) in the caller's
transaction, and takes effect on the user's next request: a session and a token read
their user's roles on every request (router/auth/sessions.py, router/auth/tokens.py).
Tokens left with no role their user still holds are revoked, sessions are ended when
the password changes, and the last enabled admin is kept (router/auth/users.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, delete, func, select

from router import audit
from router.auth.passwords import hash_password, verify_password
from router.auth.roles import encode, grants, parse_roles
from router.auth.tokens import digest
from router.auth.users import User, keep_an_admin, require_user, revoke_tokens
from router.store.inbound import utcnow
from router.store.locks import hold_key
from router.store.schema import sessions, users


@dataclass(frozen=True)
class RoleChange:
    user: User
    added: list[str]
    removed: list[str]
    tokens_revoked: list[int]


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ValueError("give a reason: it is kept in the audit log")
    return reason


def _chosen(roles: Iterable[str]) -> frozenset[str]:
    listed = [r for r in roles if r.strip()]
    return parse_roles(listed) if listed else frozenset()


def change_roles(
    conn: Connection,
    name: str,
    *,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    actor: str,
    reason: str,
) -> RoleChange:
    """Give ``name`` the roles ``add`` and take away ``remove``.

    The user keeps at least one role, and the last enabled admin keeps ``admin``. Their
    tokens keep only roles the user still holds, on the next request; a token left with
    none is revoked (listed in the audit event). Nothing changed writes nothing.
    """
    reason = _reason(reason)
    adding, removing = _chosen(add), _chosen(remove)
    if not adding and not removing:
        raise ValueError("give a role to --add or to --remove")
    both = sorted(adding & removing)
    if both:
        raise ValueError(f"role {both[0]!r} is both added and removed")
    user = require_user(conn, name)
    roles = (user.roles | adding) - removing
    if not roles:
        raise ValueError(f"{name!r} would hold no role: disable the user instead")
    if roles == user.roles:
        return RoleChange(user, [], [], [])
    keep_an_admin(conn, user, roles)
    conn.execute(
        users.update().where(users.c.id == user.id).values(roles=encode(roles), updated_at=utcnow())
    )
    revoked = revoke_tokens(
        conn, user.id, actor=actor, keep=lambda scope: any(grants(roles, r) for r in scope)
    )
    added, removed = sorted(roles - user.roles), sorted(user.roles - roles)
    audit.append(
        conn,
        actor,
        "user-roles",
        f"user:{user.name}",
        {
            "added": added,
            "removed": removed,
            "roles": sorted(roles),
            "reason": reason,
            "tokens_revoked": revoked,
        },
    )
    return RoleChange(User(user.id, user.name, roles, user.disabled), added, removed, revoked)


def enable_user(conn: Connection, name: str, *, actor: str, reason: str) -> User:
    """Let a disabled user sign in again. None of their tokens comes back (disabling
    revoked them; any left over are revoked now): issue new ones. Refused while another
    enabled account has the same name but for its case: four eyes takes the two for one
    person (docs/governance.md)."""
    reason = _reason(reason)
    user = require_user(conn, name)
    if not user.disabled:
        raise ValueError(f"user {name!r} is not disabled")
    hold_key(conn, f"users/{name.lower()}")
    twin = conn.scalar(
        select(users.c.name).where(
            func.lower(users.c.name) == name.lower(),
            users.c.id != user.id,
            users.c.disabled.is_(False),
        )
    )
    if twin is not None:
        raise ValueError(
            f"{twin!r} is enabled and differs from {name!r} only in case: disable it first"
        )
    conn.execute(
        users.update().where(users.c.id == user.id).values(disabled=False, updated_at=utcnow())
    )
    # Tokens a disable stopped without revoking (before disabling revoked them, or by SQL).
    revoked = revoke_tokens(conn, user.id, actor=actor, keep=lambda _: False)
    details = {"reason": reason, "tokens_revoked": revoked}
    audit.append(conn, actor, "user-enable", f"user:{user.name}", details)
    return User(user.id, user.name, user.roles, False)


def set_password(
    conn: Connection,
    name: str,
    password: str,
    *,
    actor: str,
    reason: str = "",
    keep_session: str = "",
) -> User:
    """Set ``name``'s password and end their sessions, but the one whose cookie is
    ``keep_session`` (the user changing their own stays signed in there). Whoever knew
    the old password is signed out everywhere else. ``actor`` is kept as who set it: a
    password an admin set cannot approve that admin's work (docs/governance.md)."""
    user = require_user(conn, name)
    conn.execute(
        users.update()
        .where(users.c.id == user.id)
        .values(password_hash=hash_password(password), password_set_by=actor, updated_at=utcnow())
    )
    ended = delete(sessions).where(sessions.c.user_id == user.id)
    if keep_session:
        ended = ended.where(sessions.c.token_hash != digest(keep_session))
    gone = conn.execute(ended).rowcount
    details: dict[str, object] = {"sessions_ended": gone}
    if reason.strip():
        details["reason"] = reason.strip()
    audit.append(conn, actor, "user-password", f"user:{user.name}", details)
    return user


def password_matches(conn: Connection, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s current one (always one argon2 verification)."""
    stored = conn.scalar(select(users.c.password_hash).where(users.c.name == name))
    return verify_password(stored, password)
