"""Each channel's state on this node, for ``/health``, ``/metrics`` and the dashboard.

A channel the node does not run does not take the node out of a load balancer (the
status code stays the store's, the listeners' and the workers'), but monitoring must see
it: a governed channel left out at start (its revision may not or cannot run and no
earlier one can, docs/governance.md) takes no messages at all, and an MLLP listener that
could not bind (a port in use, a certificate that does not load) refuses every sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    reason: str | None = None

    @property
    def up(self) -> bool:
        """Running, or paused on purpose (it still takes and stores messages)."""
        return self.state in (RUNNING, PAUSED)


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
    for name in engine.channels:
        if name in down:
            states[name] = ChannelHealth(FAILED, _bounded(down[name] or "not listening"))
        else:
            states[name] = ChannelHealth(PAUSED if name in paused else RUNNING)
    return dict(sorted(states.items()))


def paused_channels(conn: Connection) -> frozenset[str]:
    c = channel_state.c
    return frozenset(conn.scalars(select(c.channel).where(c.paused.is_(True))))


def _bounded(reason: str) -> str:
    return reason if len(reason) <= REASON_LIMIT else reason[: REASON_LIMIT - 3] + "..."
