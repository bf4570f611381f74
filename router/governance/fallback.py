"""A governed channel this node runs from an older deployed revision than its newest.

The start walks back past a newest revision that may not or cannot run
(router/governance/deploy.py): the channel then runs yesterday's mapping while the store
says today's is deployed. That is kept here, per node, for ``/health``, ``/metrics``, the
dashboard and the API (router/channel_health.py), so that nobody takes it for the newest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fallback:
    running: int  # the revision the channel runs
    newest: int  # its newest deployed (or approved) revision, which does not run here
    reason: str  # why each newer one was passed over: names files and digests, signed-in only
