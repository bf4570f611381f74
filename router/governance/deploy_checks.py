"""Governed: whether a revision may run now, checked where it would start running.

An approval is judged when it is given, but a revision runs later (the watcher's next
round, the next start), and a held batch is released only when its last approval arrives.
By then an approver may have lost the ``approver`` role or been disabled, and the mapping
code on disk may no longer be the code approved: neither may run. The engine's start
(router/governance/deploy.py), its revision watcher (router/governance/watcher.py) and the
release of a batch (router/governance/holds.py) ask here.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from router.auth.roles import decode, grants
from router.config import ChannelConfig, EngineConfig
from router.governance import mapping_code
from router.governance.mapping_code import short
from router.governance.models import APPROVED
from router.store.database import Store
from router.store.schema import users

APPROVER = "approver"


def lapsed_approvers(conn: Connection, names: Iterable[str]) -> dict[str, str]:
    """Of ``names`` (who approved), those whose approval no longer counts, with why: no
    longer an enabled user holding the approver role (``admin`` holds every role)."""
    wanted = set(names)
    if not wanted:
        return {}
    rows = conn.execute(
        select(users.c.name, users.c.roles, users.c.disabled).where(users.c.name.in_(wanted))
    )
    found = {row.name: row for row in rows}
    lapsed = {}
    for name in sorted(wanted):
        row = found.get(name)
        if row is None:
            lapsed[name] = f"{name} is no longer a user"
        elif row.disabled:
            lapsed[name] = f"{name} is disabled"
        elif not grants(decode(row.roles), APPROVER):
            lapsed[name] = f"{name} no longer holds the approver role"
    return lapsed


def lapsed_approval(store: Store, state: str, approver: str | None) -> str:
    """Why an ``approved`` revision's approval no longer counts (empty when it does, and for
    revisions that ran already: their approval was checked when they were deployed)."""
    if state != APPROVED or approver is None:
        return ""
    with store.read() as conn:
        why = lapsed_approvers(conn, [approver]).get(approver)
    return f"its approval no longer counts: {why}; it needs approving again" if why else ""


def unapproved_code(config: EngineConfig, channel: ChannelConfig, approved: str | None) -> str:
    """Why ``channel``'s mapping code on disk must not run: it is not the code ``approved``
    (empty when it is, or when the revision predates recording its code)."""
    if approved is None:
        return ""
    disk = mapping_code.digest(mapping_code.sources(config.mappings, channel))
    if disk == approved:
        return ""
    if disk is None:
        named = ", ".join(mapping_code.references(channel))
        return (
            f"the mapping code approved with it ({short(approved)}) is not under "
            f"{config.mappings}: no module of {named} is there; restore it (it is in git)"
        )
    return (
        f"its mapping code under {config.mappings} (sha256 {short(disk)}) is not the code "
        f"approved with it ({short(approved)}): restore the approved code (it is in git; "
        "run.py channel diff shows it), or propose the code on disk"
    )
