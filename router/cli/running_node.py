"""What the engine node on this host runs, from its public ``/health``: the store knows each
channel's newest deployed revision, but not that a node runs an older one (a fallback,
router/governance/fallback.py), which only that node knows."""

from __future__ import annotations

from typing import Any

from router.config import EngineConfig

TIMEOUT = 2.0  # seconds: an engine that does not answer by then is reported as not answering
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def health_url(config: EngineConfig) -> str | None:
    """Where this host's engine answers ``/health``; None when its port is chosen at start."""
    if not config.http.port:
        return None
    host = _ANY_ADDRESS.get(config.http.host, config.http.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.http.port}/health"


def running_channels(url: str) -> dict[str, dict[str, Any]] | None:
    """Each channel's state on the node at ``url`` (its revision, newest deployed revision,
    ``fallback``); None when nothing answers there as an engine does."""
    import httpx

    try:
        # Not through a proxy from the environment: the engine is on this host.
        body = httpx.get(url, timeout=TIMEOUT, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return None
    channels = body.get("channels") if isinstance(body, dict) else None
    return channels if isinstance(channels, dict) else None


def running_summary(state: dict[str, Any] | None) -> str | None:
    """A channel's state on the node in a cell: ``#2``, ``#1 FALLBACK (newest #2)``, or
    ``left-out``; None when the node does not say."""
    if not state:
        return None
    revision, deployed = state.get("revision"), state.get("deployed")
    if state.get("state") not in ("running", "paused") or revision is None:
        return str(state.get("state"))
    shown = f"#{revision}"
    if state.get("fallback"):
        shown += f" FALLBACK (newest #{deployed})"
    if state.get("restartable") is False:
        shown += " (would not restart: its code changed on disk)"
    return shown
