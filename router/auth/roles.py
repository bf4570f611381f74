"""The six roles and how a set of them is stored (one space-separated string)."""

from __future__ import annotations

from collections.abc import Iterable

# viewer: statistics and metadata; support: content, replay, pause/resume;
# engineer: propose channel revisions; approver: approve revisions and releases;
# admin: users, and every other role's rights; sender: a sending system's token for the
# FHIR sources and the booking proxy (router/fhir/senders.py), and nothing else: it is
# not a person and sees nothing, not even the viewer's metadata.
ROLES = ("viewer", "support", "engineer", "approver", "admin", "sender")
SENDER = "sender"


def parse_roles(roles: Iterable[str]) -> frozenset[str]:
    """Validate role names; ValueError names the first unknown one."""
    chosen = frozenset(r.strip().lower() for r in roles if r.strip())
    unknown = sorted(chosen - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role {unknown[0]!r} (roles: {', '.join(ROLES)})")
    if not chosen:
        raise ValueError(f"give at least one role ({', '.join(ROLES)})")
    return chosen


def encode(roles: frozenset[str]) -> str:
    return " ".join(r for r in ROLES if r in roles)


def decode(value: str) -> frozenset[str]:
    return frozenset(value.split())


def grants(held: frozenset[str], role: str) -> bool:
    """Admin passes every check; any user but a sender may see metadata (viewer)."""
    return role in held or "admin" in held or (role == "viewer" and bool(held - {SENDER}))
