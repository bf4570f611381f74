"""A governed channel this node runs from an older deployed revision than its newest.

The start walks back past a newest revision that may not or cannot run
(router/governance/deploy.py): the channel then runs yesterday's mapping while the store
says today's is deployed. That is kept here, per node, for ``/health``, ``/metrics``, the
dashboard and the API (router/channel_health.py), so that nobody takes it for the newest.

Each such start, and each channel left out, is an audit event by the engine
(``engine@NODE``, as it signs the revisions it deploys): ``revision.fallback`` or
``revision.left-out``, with the revisions and why, so that ``/api/audit`` and the console's
audit log show when yesterday's mapping ran, not only the log file of one node. So is a
running revision whose approved code is gone from disk (``revision.code-differs``): it runs
on what it loaded, but a restart would not start it.
"""

from __future__ import annotations

from dataclasses import dataclass

from router import audit
from router.store.database import Store

FALLBACK, LEFT_OUT, CODE_DIFFERS = "revision.fallback", "revision.left-out", "revision.code-differs"


@dataclass(frozen=True)
class Fallback:
    running: int  # the revision the channel runs
    newest: int  # its newest deployed (or approved) revision, which does not run here
    reason: str  # why each newer one was passed over: names files and digests, signed-in only


def engine_actor(node: str) -> str:
    """Who the audit log names for what the engine on ``node`` decides by itself."""
    return f"engine@{node}"


def record(
    store: Store, node: str, channel: str, newest: int, running: int | None, reason: str
) -> None:
    """Audit that ``node`` runs ``channel`` from revision ``running`` instead of ``newest``
    (``revision.fallback``), or none of its revisions (``running`` None: ``revision.left-out``)."""
    action = LEFT_OUT if running is None else FALLBACK
    details: dict[str, object] = {"number": newest, "node": node, "reason": reason}
    if running is not None:
        details["running"] = running
    with store.begin() as conn:
        audit.append(conn, engine_actor(node), action, f"channel:{channel}", details)


def record_code_differs(store: Store, node: str, channel: str, number: int, reason: str) -> None:
    """Audit that ``node`` runs revision ``number`` of ``channel`` on the approved code it
    loaded while the code on disk is other: a restart would not start it."""
    details = {"number": number, "node": node, "reason": reason}
    with store.begin() as conn:
        audit.append(conn, engine_actor(node), CODE_DIFFERS, f"channel:{channel}", details)
