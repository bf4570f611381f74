"""Each channel's state on this node, for ``/health``, ``/metrics`` and the dashboard.

A channel the node does not run does not take the node out of a load balancer (the
status code stays the store's, the listeners' and the workers'), but monitoring must see
it: a governed channel left out at start (its revision may not or cannot run and no
earlier one can, docs/governance.md) takes no messages at all, and an MLLP listener that
could not bind (a port in use, a certificate that does not load) refuses every sender.
Nor may a governed channel started from an older revision than its newest deployed one
(a fallback) pass for plain ``running``: it runs yesterday's mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from router.store.schema import channel_state

if TYPE_CHECKING:
    from router.engine import Engine

RUNNING, PAUSED, LEFT_OUT, FAILED = "running", "paused", "left-out", "failed"
# A reason is a ConfigError's text or an OSError's, shown on the dashboard: bounded.
REASON_LIMIT = 500


@dataclass(frozen=True)
class ChannelHealth:
    state: str
    reason: str | None = None  # why it is down or a fallback: signed-in views only
    revision: int | None = None  # the revision it runs (None: not run, or not recorded)
    deployed: int | None = None  # its newest deployed revision, as far as this node knows
    restartable: bool = True  # False: its approved code is gone from disk (governed)

    @property
    def up(self) -> bool:
        """Running, or paused on purpose (it still takes and stores messages)."""
        return self.state in (RUNNING, PAUSED)

    @property
    def fallback(self) -> bool:
        """It runs an older revision than its newest deployed one (that one may not run)."""
        return self.revision is not None and self.revision != self.deployed

    @property
    def degraded(self) -> bool:
        """Not what was approved last (down, or running an older revision), or would not be
        after a restart."""
        return not self.up or self.fallback or not self.restartable

    def public(self) -> dict[str, Any]:
        """What ``/health`` (public) shows: the numbers, never the reason."""
        return {
            "state": self.state,
            "revision": self.revision,
            "deployed": self.deployed,
            "fallback": self.fallback,
            "restartable": self.restartable,
        }


def channel_health(
    engine: Engine, paused: frozenset[str] = frozenset()
) -> dict[str, ChannelHealth]:
    """Every channel the engine runs or left out, by name; ``paused``: the channels paused
    in the store (read by the caller, who may not want the query)."""
    states = {
        name: ChannelHealth(LEFT_OUT, _bounded(why))
        for name, why in engine.left_out.items()
        if name not in engine.channels
    }
    down = {x.channel.name: x.failure for x in engine.listeners if not x.serving}
    for name, compiled in engine.channels.items():
        fallback = engine.fallbacks.get(name)
        revision = compiled.revision
        deployed = fallback.newest if fallback is not None else revision
        if name in down:
            states[name] = ChannelHealth(
                FAILED, _bounded(down[name] or "not listening"), revision, deployed
            )
        else:
            state = PAUSED if name in paused else RUNNING
            stale = engine.not_restartable.get(name)
            why = fallback.reason if fallback is not None else stale
            states[name] = ChannelHealth(
                state, why and _bounded(why), revision, deployed, stale is None
            )
    return dict(sorted(states.items()))


def paused_channels(conn: Connection) -> frozenset[str]:
    c = channel_state.c
    return frozenset(conn.scalars(select(c.channel).where(c.paused.is_(True))))


def _bounded(reason: str) -> str:
    return reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 3] + "..."
