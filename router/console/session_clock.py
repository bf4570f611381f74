"""When a page's session will end, for static/session-timeout.js to warn before it does.

Seconds from now rather than times of day, so a browser whose clock is wrong still warns
on time. The lead is ``auth.session_warning``, at most half the limit it warns about (a
one-minute idle limit warns after 30 s, not at once).
"""

from __future__ import annotations

from fastapi import Request

from router.store.inbound import utcnow

IDLE_LEFT_HEADER = "X-Session-Idle-Left"


def session_clock(request: Request) -> dict[str, int] | None:
    """``idle-left``, ``life-left``, ``warn-idle``, ``warn-life`` (seconds), for a session."""
    session = getattr(request.state, "session", None)
    if session is None:
        return None
    options = request.app.state.auth.options
    now = utcnow()
    return {
        "idle-left": round((session.idle_ends - now).total_seconds()),
        "life-left": round((session.expires_at - now).total_seconds()),
        "warn-idle": int(min(options.session_warning, options.session_idle / 2)),
        "warn-life": int(min(options.session_warning, options.session_lifetime / 2)),
    }
