"""The console's Jinja2 environment: autoescape always on, plain filters, one ``render``.

Message content is hostile input (an HL7 field can hold ``<script>``), so every
template is escaped whatever its name, and nothing here marks content safe. The
responses carry a Content-Security-Policy that allows only the console's own
scripts and styles, a second line of defence behind the escaping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from router.cancel import CANCELLABLE
from router.console.form_nonce import new_nonce
from router.console.session_clock import IDLE_LEFT_HEADER, session_clock
from router.replay import FINISHED
from router.replay_batch import is_synchronous

HERE = Path(__file__).parent
STATIC = HERE / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def when(value: datetime | None) -> str:
    """A UTC time to the second, the way the CLI prints it."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def age(value: datetime | None, now: datetime | None = None) -> str:
    """How long ago, in the largest unit that reads at a glance (``3m 12s``, ``2h 5m``, ``4d``)."""
    if value is None:
        return ""
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 60:
        return f"{max(seconds, 0)}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d"


def text(value: bytes | str | None) -> str:
    """Bytes shown as text; bytes that are not UTF-8 are replaced, never interpreted."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def cause(error: str | None) -> str:
    """What went wrong, in the line that says it: a mapping's failure is stored as its
    traceback, whose first line is the same for every failure and whose last names the
    cause (``KeyError: 'W9'``); any other error is its own summary."""
    if not error:
        return ""
    if not error.startswith("Traceback"):
        return error
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1]


def pretty_json(value: bytes | str | None) -> str:
    """Indented JSON for reading; the text as it is when it does not parse."""
    raw = text(value)
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, age=age, pretty_json=pretty_json, cause=cause)
    env.globals["resendable"] = FINISHED  # a delivery still to be sent offers no Resend
    env.globals["form_nonce"] = new_nonce  # every form that acts: router/console/form_once.py
    env.globals["is_synchronous"] = is_synchronous  # nor a synchronous exchange's
    env.globals["cancellable"] = CANCELLABLE  # one waiting for the dispatcher offers Cancel
    return env


templates = Jinja2Templates(env=_environment())


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    """Render ``name`` with the console's security headers, and when its session ends
    (the page's ``session_clock``, and a header that htmx requests read)."""
    clock = session_clock(request)
    context = {"principal": None, "csrf": "", "session_clock": clock, **(context or {})}
    headers = dict(SECURITY_HEADERS)
    if clock:
        headers[IDLE_LEFT_HEADER] = str(clock["idle-left"])
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=headers
    )
