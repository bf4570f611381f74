"""``Idempotency-Key`` on the API's replays: a retried request is answered, not replayed.

A client that sends a replay again (its first attempt timed out, the network dropped the
answer) would resend every delivery a second time. With an ``Idempotency-Key`` header
(the IETF httpapi draft's), the first request's answer is kept per caller and key
(router/store/idempotency.py): the same request again gets that answer with
``Idempotent-Replayed: true`` and an audit event (``<kind>.repeat``), and replays nothing;
the same key with another request is 422; while the first is still being answered, 409.
The first request's own audit events carry the key too, so the log pairs it with its retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from router import audit
from router.api.security import Principal
from router.store.database import Store
from router.store.idempotency import Seen, claim, give_up, keep
from router.store.inbound import utcnow

REPLAYED = "Idempotent-Replayed"
# A claim this old with no answer was most likely cut short (the engine stopped mid-way).
UNANSWERED_AFTER = timedelta(minutes=10)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="any text of 1 to 255 visible ASCII characters, new for each request: "
        "a retry with the same key and body is answered as the first was, nothing replayed",
    ),
]


def request_hash(path: str, body: BaseModel) -> str:
    """What makes two requests the same one: the path and the body as parsed (so spacing
    and member order do not matter)."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{path}\n{canonical}".encode()).hexdigest()


async def idempotent(
    store: Store,
    principal: Principal,
    key: str | None,
    route: str,
    body: BaseModel,
    kind: str,
    run: Callable[[], Awaitable[dict[str, Any]]],
    path: str | None = None,
) -> dict[str, Any] | JSONResponse:
    """``run()``'s answer, kept under ``key``; or the answer kept for the same request.
    ``route`` is the route's template (kept, and named in the audit), ``path`` the path
    asked when it has parameters (e.g. which delivery: part of what makes it the same)."""
    if key is None:
        return await run()
    actor, digest = principal.name, request_hash(path or route, body)
    try:
        seen = await asyncio.to_thread(
            store.run, lambda conn: claim(conn, actor, key, route, digest, utcnow())
        )
    except IntegrityError:  # claimed by a request that came at the same moment
        seen = Seen(route, digest, utcnow(), None, None)
    if seen is not None:
        return await _repeated(store, principal, key, route, digest, kind, seen)
    try:
        with audit.requested_with(key):
            answer = await run()
    except BaseException:
        await asyncio.to_thread(store.run, lambda conn: give_up(conn, actor, key))
        raise
    kept = json.dumps(answer)
    await asyncio.to_thread(store.run, lambda conn: keep(conn, actor, key, 200, kept))
    return answer


async def _repeated(
    store: Store, principal: Principal, key: str, route: str, digest: str, kind: str, seen: Seen
) -> JSONResponse:
    if (seen.route, seen.request_hash) != (route, digest):
        raise HTTPException(
            422,
            f"Idempotency-Key {key!r} was used at {seen.created_at.isoformat()} for another "
            f"request ({seen.route}): a new request needs a new key",
        )
    if seen.status is None or seen.answer is None:
        raise HTTPException(409, _unanswered(key, seen))
    details = {"idempotency_key": key, "first_at": seen.created_at.isoformat(), "via": "api"}
    await asyncio.to_thread(
        store.run, lambda conn: audit.append(conn, principal.name, f"{kind}.repeat", route, details)
    )
    return JSONResponse(json.loads(seen.answer), seen.status, headers={REPLAYED: "true"})


def _unanswered(key: str, seen: Seen) -> str:
    """Why a key's first request has no answer kept: still running, or, past
    ``UNANSWERED_AFTER``, most likely cut short; what it did is in the audit log, and running
    it again under this key could replay twice, so it takes a new key."""
    if utcnow() - seen.created_at < UNANSWERED_AFTER:
        return f"the request with Idempotency-Key {key!r} is still being answered: retry later"
    return (
        f"the request with Idempotency-Key {key!r} began at {seen.created_at.isoformat()} and "
        "has no answer kept: the engine most likely stopped while answering it. See the audit "
        "log (GET /api/audit) for what it replayed; a request for the rest needs a new key"
    )
