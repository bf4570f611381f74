"""Console forms act once: a one-time nonce in every state-changing form.

A browser sends a form's POST again on a double click, or on reload or back after it: the
token form issued two tokens and a bulk resend replayed twice. Each such form carries a
``form_nonce`` made when the page was rendered: random, and signed with the session's
CSRF token, so it is bound to that session and cannot be made up. Its first sending is
recorded in ``form_submissions`` before the form acts; a second sending of the same nonce
finds the record and is answered with a page saying so, with a link to what the first
sending led to, and does nothing again. A refused sending (an answer of 400 or more, or an
exception) releases its nonce, so the form can be corrected and sent again.

A form that does not act on anything (sign-in, sign-out, a dry run) carries none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from router.api.security import ConsoleForbidden, authenticator, csrf_token
from router.console.form_nonce import FIELD, nonce_key
from router.console.templating import render
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import form_submissions

MAX_OUTCOME = 2000

fs = form_submissions.c


def form_outcome(request: Request, location: str) -> None:
    """Where a second sending of this request's form should point, when its answer is not a
    redirect (the page showing a new token: the second sending is told its id only)."""
    request.state.form_outcome = location


async def once(request: Request, act: Callable[[], Awaitable[Response]]) -> Response:
    """Run ``act`` if this request's form nonce was never sent before; else say it was.

    Call it from a route whose principal dependency has run (the session is loaded)."""
    key = await _checked_key(request)
    store: Store = authenticator(request).store
    lifetime = authenticator(request).options.session_lifetime
    if not await asyncio.to_thread(_claim, store, key, lifetime):
        outcome = await asyncio.to_thread(_outcome, store, key)
        return _again(request, outcome)
    try:
        answer = await act()
    except BaseException:
        await asyncio.to_thread(_release, store, key)
        raise
    if answer.status_code >= 400:
        await asyncio.to_thread(_release, store, key)
        return answer
    location = getattr(request.state, "form_outcome", None) or answer.headers.get("location")
    if location:
        await asyncio.to_thread(_record, store, key, location[:MAX_OUTCOME])
    return answer


async def _checked_key(request: Request) -> str:
    key = nonce_key((await request.form()).get(FIELD), csrf_token(request))
    if key is None:
        raise ConsoleForbidden("The form was missing its one-time token. Reload the page.")
    return key


def _claim(store: Store, key: str, lifetime: float) -> bool:
    """Record the nonce as sent; False when it already was. Nonces older than a session's
    lifetime are deleted: their session has ended, so none can be sent again."""
    now = utcnow()
    try:
        with store.begin() as conn:
            ended = fs.used_at < now - timedelta(seconds=lifetime)
            conn.execute(delete(form_submissions).where(ended))
            conn.execute(form_submissions.insert().values(nonce=key, used_at=now))
    except IntegrityError:
        return False
    return True


def _outcome(store: Store, key: str) -> str | None:
    with store.read() as conn:
        return conn.scalar(select(fs.outcome).where(fs.nonce == key))


def _record(store: Store, key: str, location: str) -> None:
    with store.begin() as conn:
        conn.execute(form_submissions.update().where(fs.nonce == key).values(outcome=location))


def _release(store: Store, key: str) -> None:
    with store.begin() as conn:
        conn.execute(delete(form_submissions).where(fs.nonce == key))


def _again(request: Request, outcome: str | None) -> Response:
    """The answer to a second sending: nothing done, and where the first one's answer led
    (a console path only: it was the first answer's own redirect)."""
    context = {
        "principal": getattr(request.state, "principal", None),
        "csrf": csrf_token(request),
        "outcome": outcome if outcome and outcome.startswith("/") and outcome[1:2] != "/" else None,
    }
    return render(request, "form_again.html", context, status_code=409)
