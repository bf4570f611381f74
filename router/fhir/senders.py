"""Who may send to a FHIR source or the booking proxy: a sending system's API token.

A channel's source with ``auth: token`` (the default) takes a request only with the bearer
token of an API user holding the ``sender`` role (``run.py users token NAME --role
sender``), and, when the source names ``senders``, only of those users. A FHIR source
reads the token from ``Authorization``; the proxy from ``Proxy-Authorization``, because
its ``Authorization`` is the caller's credential for the provider and goes on to it. A
request without a usable token is refused 401 (407 at the proxy) with ``WWW-Authenticate``
(``Proxy-Authenticate``) ``Bearer``, one whose user may not send there 403; the caller
stores the refused request with the reason, as it does every refusal.

The token is looked up in the store on every request, so a revoked token, or a disabled
user's, is refused from the next request on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError

from router.auth.roles import SENDER, decode, grants
from router.auth.token_use import use_token
from router.auth.users import anyone_holds
from router.config.http import SenderAuth
from router.fhir.outcome import Rejected, reject
from router.outage_log import is_store_outage, outage_reason
from router.repeat_log import RepeatLog
from router.store.database import Store
from router.store.schema import users

if TYPE_CHECKING:
    from router.pipeline import CompiledChannel

log = logging.getLogger(__name__)

# How to get a token, named in every 401 (407).
HOW = f"a user with the {SENDER} role (run.py users token NAME --role {SENDER})"


def bearer(value: str) -> str | None:
    """The token of an ``Authorization`` (or ``Proxy-Authorization``) value ``Bearer <token>``."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def unprovided(store: Store, channels: Iterable[CompiledChannel]) -> str | None:
    """A start-up warning when channels take only senders' tokens and no user can have
    one yet (a fresh install): every request to them is refused 401 until one is made."""
    guarded = sorted(
        c.name
        for c in channels
        if (source := c.config.source.http or c.config.source.proxy) and source.auth == "token"
    )
    if not guarded:
        return None
    with store.read() as conn:
        if anyone_holds(conn, SENDER):
            return None
    return (
        f"channel(s) {', '.join(guarded)} take requests only with a sender's token, and no "
        f"user has the {SENDER} role yet: `run.py users add NAME --role {SENDER} "
        f"--no-password`, then `run.py users token NAME --role {SENDER}` (docs/fhir.md#senders)"
    )


def named_sources(channels: Iterable[CompiledChannel]) -> list[tuple[str, SenderAuth]]:
    """(channel, source) of every FHIR or proxy source that names its ``senders``."""
    named = []
    for compiled in channels:
        source = compiled.config.source.http or compiled.config.source.proxy
        if source is not None and source.senders:
            named.append((compiled.name, source))
    return sorted(named, key=lambda pair: pair[0])


def unknown_senders(conn: Connection, sources: Iterable[tuple[str, SenderAuth]]) -> list[str]:
    """A sentence for each name in a source's ``senders`` that cannot send: no such user
    (a typo), a disabled one, or one without the sender role. Each is refused 403 at run
    time, which nobody at the sending end understands; the users live in the store, so
    only the engine's start (and ``run.py check`` when it can read the store) can tell."""
    rows = conn.execute(select(users.c.name, users.c.roles, users.c.disabled)).all()
    known = {row.name.lower(): row for row in rows}  # names are unique regardless of case
    problems = []
    for channel, source in sources:
        for name in source.senders:
            row = known.get(name.lower())
            if row is None:
                why = "is not a user"
            elif row.disabled:
                why = "is disabled"
            elif not grants(decode(row.roles), SENDER):
                why = f"does not hold the {SENDER} role"
            else:
                continue
            problems.append(
                f"channel {channel}: sender {name!r} {why}: its requests are refused 403 "
                "(run.py users list; docs/fhir.md#senders)"
            )
    return problems


def senders_not_ready(store: Store, channels: Iterable[CompiledChannel]) -> list[str]:
    """``unknown_senders`` of ``channels``, read from ``store`` (the start-up warnings)."""
    sources = named_sources(channels)
    if not sources:
        return []
    with store.read() as conn:
        return unknown_senders(conn, sources)


class Senders:
    """Checks a request's token against a source's ``auth`` and ``senders``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # A client hammering with a bad token: once per host and channel every few minutes;
        # the store down: once per channel.
        self._refused = RepeatLog(log)

    async def check(
        self,
        credentials: str,
        channel: str,
        options: SenderAuth,
        *,
        proxy: bool = False,
        peer: str = "",
    ) -> str | None:
        """The sending user's name; None for a source that takes anyone (``auth: none``).
        Raises Rejected: 401 (407 for the proxy) without a live token, 403 for a user who
        is not a sender, or not one of the source's ``senders``; 503 when the store cannot
        be read (nothing is acknowledged: the sender sends again)."""
        if options.auth == "none":
            return None
        header = "Proxy-Authorization" if proxy else "Authorization"
        token = bearer(credentials)
        if token is None:
            text = f"channel {channel} takes requests from senders only: send {header}"
            raise _unauthenticated(f"{text}: Bearer <the token of {HOW}>", proxy)
        try:
            holder = await asyncio.to_thread(use_token, self._store, token)
        except SQLAlchemyError as exc:
            if is_store_outage(exc):  # every request fails alike while it lasts: one line
                self._refused.error(
                    ("store unavailable", channel),
                    "channel %s: answering 503: a sender's token could not be checked: %s "
                    "(the next ones while it lasts are counted)",
                    channel,
                    outage_reason(exc),
                )
            else:
                log.error("channel %s: a sender's token could not be checked: %s", channel, exc)
            text = "the token could not be checked; send again later"
            raise reject(503, "transient", text) from exc
        if holder is None:
            self._refused.warning(
                (peer.rsplit(":", 1)[0], channel),
                "channel %s: refused a request from %s with an invalid, revoked or expired token",
                channel,
                peer or "an unknown address",
            )
            raise _unauthenticated(f"the {header} token is invalid, revoked or expired", proxy)
        name, roles = holder.name, holder.roles
        if not grants(roles, SENDER):
            raise reject(403, "forbidden", f"user {name} does not hold the {SENDER} role")
        # User names are unique regardless of case (router/auth/users.py).
        if options.senders and name.lower() not in {s.lower() for s in options.senders}:
            raise reject(403, "forbidden", f"user {name} is not a sender of channel {channel}")
        return name


def _unauthenticated(text: str, proxy: bool) -> Rejected:
    """401 with ``WWW-Authenticate``, or at the proxy 407 with ``Proxy-Authenticate``."""
    exc = reject(407 if proxy else 401, "login", text)
    exc.headers["proxy-authenticate" if proxy else "www-authenticate"] = "Bearer"
    return exc
