"""``/api/messages`` and ``/api/deliveries``: search, detail, reprocess, resend and cancel.

Searching is metadata (viewer); the detail holds message content and is an
audited view (support); reprocess, resend and cancel (support) take one id or a search,
need a reason, can be run dry, and write one audit event per message, paced like
the CLI (router.replay.Pace) in batches of one transaction each. A replay sent with an
``Idempotency-Key`` is answered once: its retry gets the kept answer (router/api/idempotency.py).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from router import audit, cancel, replay
from router.api.idempotency import IdempotencyKey, idempotent
from router.api.params import BodyId, Cursor, IdPath, Moment, MomentQuery
from router.api.security import Principal, require_role
from router.downloads import delivery_response, message_response
from router.store.queries import MessageFilter, find_message_id, search, with_delivery_counts
from router.store.schema import deliveries

if TYPE_CHECKING:
    from router.engine import Engine

MAX_BULK = 10_000
MessageStatus = Literal["received", "validating", "processed", "filtered", "error"]
# A message's ``id`` as the search answers it (a JSON number), or a ref as text.
Ref = Annotated[
    BodyId | Annotated[str, Field(max_length=64)],
    Field(description="id (a number or its text), UUID or urn:tie:message:"),
]
# The statuses a resend accepts (router.replay.FINISHED): one still to be sent would go twice.
FinishedStatus = Literal["failed", "sent", "resent", "cancelled"]
DeliveryStatus = Literal[
    "failed", "retrying", "queued", "sending", "held", "sent", "resent", "cancelled"
]


class SearchIn(BaseModel):
    """The CLI's search options; at least one must be given for a bulk replay."""

    model_config = ConfigDict(extra="forbid")

    channel: str | None = Field(default=None, max_length=64)
    status: MessageStatus | None = None
    since: Moment | None = None
    until: Moment | None = None
    type: str | None = Field(default=None, max_length=64, description="MSH-9, e.g. ORU^R01")
    control_id: str | None = Field(default=None, max_length=199)
    key: str | None = Field(default=None, max_length=255)
    text: str | None = Field(default=None, max_length=255)
    flag: str | None = Field(default=None, max_length=32, description="e.g. unmatched-order")

    def as_filter(self, limit: int) -> MessageFilter:
        return MessageFilter(
            channel=self.channel,
            status=self.status,
            since=self.since,
            until=self.until,
            message_type=self.type,
            control_id=self.control_id,
            key=self.key,
            text=self.text,
            flag=self.flag,
            limit=limit,
        )


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=1000, description="why (kept in the audit log)")
    dry_run: bool = Field(default=False, description="list what would happen, change nothing")


class BulkIn(ReplayIn):
    """A bulk replay names its messages one way: ``ids``, or a ``search``."""

    ids: list[Any] | None = None
    search: SearchIn | None = None
    limit: int = Field(default=1000, ge=1, le=MAX_BULK)

    @model_validator(mode="after")
    def _ids_or_search(self) -> BulkIn:
        if self.ids is not None and self.search is not None:
            raise ValueError("give ids or a search, not both")
        return self


class BulkReprocessIn(BulkIn):
    ids: list[Ref] | None = Field(default=None, max_length=MAX_BULK, description="message refs")


class BulkResendIn(BulkIn):
    ids: list[BodyId] | None = Field(default=None, max_length=MAX_BULK, description="delivery ids")
    destination: str | None = Field(default=None, max_length=64)
    delivery_status: FinishedStatus | None = Field(
        default="failed", description="null: any finished status (resent ones with again)"
    )
    again: bool = Field(default=False, description="also deliveries already resent")


class BulkCancelIn(BulkIn):
    ids: list[BodyId] | None = Field(default=None, max_length=MAX_BULK, description="delivery ids")
    destination: str | None = Field(default=None, max_length=64)


def message_routes(engine: Engine) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["messages"])
    store = engine.store

    @router.get("/messages")
    async def list_messages(
        principal: Principal = Depends(require_role("viewer")),
        channel: str | None = Query(default=None, max_length=64),
        status: MessageStatus | None = None,
        since: MomentQuery = None,
        until: MomentQuery = None,
        type: str | None = Query(default=None, max_length=64, description="MSH-9, e.g. ORU^R01"),
        control_id: str | None = Query(default=None, max_length=199),
        key: str | None = Query(default=None, max_length=255, description="a correlation key"),
        text: str | None = Query(
            default=None, max_length=255, description="support; last 24h by default; audited"
        ),
        flag: str | None = Query(default=None, max_length=32, description="e.g. unmatched-order"),
        delivery_status: DeliveryStatus | None = None,
        before: Cursor = None,
        limit: int = Query(default=50, ge=1, le=500),
    ) -> dict[str, Any]:
        """Newest first, metadata only, each with its deliveries counted by status (a
        message whose delivery failed is ``processed``); every filter is served by an
        index. Searching the content (``text``) tells what it holds: it needs ``support``
        and is audited."""
        if text and not principal.has("support"):
            raise HTTPException(403, "searching content (text) needs the role support")
        f = SearchIn(
            channel=channel,
            status=status,
            since=since,
            until=until,
            type=type,
            control_id=control_id,
            key=key,
            text=text,
            flag=flag,
        ).as_filter(limit)
        f.before_id = before
        f.delivery_status = delivery_status

        def find() -> list[dict[str, Any]]:
            if not f.text:
                with store.read() as conn:
                    return with_delivery_counts(conn, search(conn, f))
            with store.begin() as conn:
                rows = with_delivery_counts(conn, search(conn, f))
                found = [row["uuid"] for row in rows]
                audit.searched_content(conn, principal.name, f.text, found, via="api")
                return rows

        rows = await asyncio.to_thread(find)
        return {"messages": jsonable(rows), "next": rows[-1]["id"] if len(rows) == limit else None}

    @router.get("/messages/{ref}")
    async def get_message(
        ref: str, principal: Principal = Depends(require_role("support"))
    ) -> dict[str, Any]:
        """The message with its content, deliveries and attempts; every call is audited."""

        def load() -> dict[str, Any] | None:
            with store.begin() as conn:
                return audit.viewed_message(conn, ref, store.blobs, actor=principal.name, via="api")

        detail = await asyncio.to_thread(load)
        if detail is None:
            raise HTTPException(404, f"no message {ref}")
        return jsonable(detail)

    @router.get("/messages/{ref}/raw", response_class=Response)
    async def download_message(
        ref: str, principal: Principal = Depends(require_role("support"))
    ) -> Response:
        """The message's whole content (the detail shows its first 64 KiB), as an
        attachment; every call is audited."""
        return await message_response(store, ref, actor=principal.name, via="api")

    @router.get("/deliveries/{delivery_id}/payload", response_class=Response)
    async def download_delivery(
        delivery_id: IdPath, principal: Principal = Depends(require_role("support"))
    ) -> Response:
        """The delivery's whole payload, as an attachment; every call is audited."""
        return await delivery_response(store, delivery_id, actor=principal.name, via="api")

    @router.post("/messages/{ref}/reprocess")
    async def reprocess_one(
        ref: str,
        body: ReplayIn,
        principal: Principal = Depends(require_role("support")),
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Run the stored message through its channel's current revision again."""

        async def run() -> dict[str, Any]:
            ids = await asyncio.to_thread(_message_ids, store, [ref])
            return await _replay(body, ids, _reprocess(store, body, principal), engine, "reprocess")

        route, path = "/api/messages/{ref}/reprocess", f"/api/messages/{ref}/reprocess"
        return await idempotent(
            store, principal, idempotency_key, route, body, "reprocess", run, path
        )

    @router.post("/messages/reprocess")
    async def reprocess_many(
        body: BulkReprocessIn,
        principal: Principal = Depends(require_role("support")),
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Reprocess the messages named in ``ids``, or those a ``search`` finds."""

        async def run() -> dict[str, Any]:
            if body.ids is not None:
                ids = await asyncio.to_thread(_message_ids, store, body.ids)
            else:
                ids = await asyncio.to_thread(_searched, store, _search_of(body), body.limit)
            return await _replay(body, ids, _reprocess(store, body, principal), engine, "reprocess")

        route = "/api/messages/reprocess"
        return await idempotent(store, principal, idempotency_key, route, body, "reprocess", run)

    @router.post("/deliveries/{delivery_id}/resend")
    async def resend_one(
        delivery_id: IdPath,
        body: ReplayIn,
        principal: Principal = Depends(require_role("support")),
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Queue the finished delivery's payload again, as sent, with its original idempotency
        key; 409 for one still to be sent (it would go twice)."""

        async def run() -> dict[str, Any]:
            act = _resend(store, body, principal)
            return await _replay(body, [delivery_id], act, engine, "resend")

        route, path = "/api/deliveries/{id}/resend", f"/api/deliveries/{delivery_id}/resend"
        return await idempotent(store, principal, idempotency_key, route, body, "resend", run, path)

    @router.post("/deliveries/resend")
    async def resend_many(
        body: BulkResendIn,
        principal: Principal = Depends(require_role("support")),
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Resend the deliveries in ``ids``, or those of the messages a ``search`` finds
        (in ``delivery_status``, failed by default, and to ``destination`` when given).
        A search skips deliveries already resent unless ``again`` is true. An id still to
        be sent is a 409 before anything is resent. A search's answer counts, in
        ``left_out``, the deliveries it found and did not resend, with why."""

        async def run() -> dict[str, Any]:
            ids, left_out = await _resend_targets(store, body)
            again = body.ids is not None or body.again
            act = _resend(store, body, principal, again)
            answer = await _replay(body, ids, act, engine, "resend")
            if left_out is not None:
                answer["left_out"] = _left_out(left_out)
            return answer

        route = "/api/deliveries/resend"
        return await idempotent(store, principal, idempotency_key, route, body, "resend", run)

    @router.post("/deliveries/{delivery_id}/cancel")
    async def cancel_one(
        delivery_id: IdPath,
        body: ReplayIn,
        principal: Principal = Depends(require_role("support")),
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Stop a delivery waiting to be sent (queued, retrying): it becomes ``cancelled``
        and is never sent. 409 for one being sent now, held, finished, or a DPS job's."""

        async def run() -> dict[str, Any]:
            return await _replay(
                body, [delivery_id], _cancel(store, body, principal), engine, "cancel"
            )

        route, path = "/api/deliveries/{id}/cancel", f"/api/deliveries/{delivery_id}/cancel"
        return await idempotent(store, principal, idempotency_key, route, body, "cancel", run, path)

    @router.post("/deliveries/cancel")
    async def cancel_many(
        body: BulkCancelIn,
        principal: Principal = Depends(require_role("support")),
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        """Cancel the deliveries in ``ids`` (any refused is a 409 before anything is
        cancelled), or those still to be sent of the messages a ``search`` finds (to
        ``destination`` when given)."""

        async def run() -> dict[str, Any]:
            ids = await _cancel_targets(store, body)
            return await _replay(body, ids, _cancel(store, body, principal), engine, "cancel")

        route = "/api/deliveries/cancel"
        return await idempotent(store, principal, idempotency_key, route, body, "cancel", run)

    return router


Act = Callable[[list[int]], list[replay.ReplayResult]]


async def _resend_targets(store: Any, body: BulkResendIn) -> tuple[list[int], int | None]:
    """The deliveries a bulk resend names: its ``ids`` (all finished, else 409), or those
    of the messages its search finds, with how many of theirs it left out (synchronous
    exchanges' deliveries, which are not resent; None for ``ids``)."""
    if body.ids is not None:
        ids = await asyncio.to_thread(_delivery_ids, store, body.ids)
        if not body.dry_run:
            await asyncio.to_thread(_finished, store, ids)
        return ids, None
    search_in = _search_of(body)

    def find() -> replay.Chosen:
        chosen = _searched(store, search_in, body.limit)
        with store.read() as conn:
            return replay.deliveries_of(
                conn,
                chosen,
                status=body.delivery_status,
                destination=body.destination,
                again=body.again,
            )

    found = await asyncio.to_thread(find)
    return found.ids, found.synchronous


async def _cancel_targets(store: Any, body: BulkCancelIn) -> list[int]:
    """The deliveries a bulk cancel names: its ``ids`` (all cancellable, else 409), or the
    ones still to be sent of the messages its search finds."""
    if body.ids is not None:
        ids = await asyncio.to_thread(_delivery_ids, store, body.ids)
        if not body.dry_run:
            await asyncio.to_thread(_cancellable, store, ids)
        return ids
    search_in = _search_of(body)

    def find() -> list[int]:
        chosen = _searched(store, search_in, body.limit)
        with store.read() as conn:
            return cancel.waiting_of(conn, chosen, destination=body.destination)

    return await asyncio.to_thread(find)


def _cancel(store: Any, body: ReplayIn, principal: Principal) -> Act:
    return lambda ids: cancel.cancel_many(store, ids, reason=body.reason, actor=principal.name)


def _reprocess(store: Any, body: ReplayIn, principal: Principal) -> Act:
    return lambda ids: replay.reprocess_many(store, ids, reason=body.reason, actor=principal.name)


def _resend(store: Any, body: ReplayIn, principal: Principal, again: bool = True) -> Act:
    """A search's resend leaves out, under its lock, what was resent since it looked (not
    ``again``): the same request sent twice resends each delivery once."""
    return lambda ids: replay.resend_many(
        store, ids, reason=body.reason, actor=principal.name, again=again
    )


async def _replay(
    body: ReplayIn, ids: list[int], act: Act, engine: Engine, kind: str
) -> dict[str, Any]:
    store = engine.store
    if not body.reason.strip():
        raise HTTPException(422, "the reason must say why")
    # Each message or delivery once, however often (or by however many refs) it is named:
    # the dry run lists it once, and the run must do what the dry run said.
    ids = list(dict.fromkeys(ids))
    if body.dry_run:
        results = await asyncio.to_thread(_PLANS[kind], store, ids)
        if not results and len(ids) == 1:
            raise HTTPException(404, f"no {'message' if kind == 'reprocess' else 'delivery'}")
    else:
        results = []
        pace = replay.Pace(replay.RATE)
        for batch in pace.batches(ids):
            try:
                done = await asyncio.to_thread(act, batch)
            except LookupError as exc:
                raise HTTPException(404, str(exc)) from exc
            except replay.NotFinished as exc:
                raise HTTPException(409, str(exc)) from exc
            results.extend(done)
            await asyncio.to_thread(engine.replayed, kind, done)
            await asyncio.sleep(pace.pause(len(batch)))
    return {
        "dry_run": body.dry_run,
        "count": len(results),
        "results": [r.__dict__ for r in results],
    }


def _left_out(synchronous: int) -> list[dict[str, Any]]:
    """What a search's resend chose not to resend, counted with why."""
    if not synchronous:
        return []
    return [{"count": synchronous, "reason": replay.SYNCHRONOUS_LEFT_OUT}]


_PLANS = {
    "reprocess": replay.plan_reprocess,
    "resend": replay.plan_resend,
    "cancel": cancel.plan_cancel,
}


def _search_of(body: BulkIn) -> SearchIn:
    chosen = body.search
    if chosen is None or not chosen.model_dump(exclude_none=True):
        raise HTTPException(422, "give ids, or a search with at least one filter")
    return chosen


def _message_ids(store: Any, refs: list[int | str]) -> list[int]:
    found = []
    with store.read() as conn:
        for ref in refs:
            message_id = find_message_id(conn, str(ref))
            if message_id is None:
                raise HTTPException(404, f"no message {ref}")
            found.append(message_id)
    return found


def _delivery_ids(store: Any, ids: list[int]) -> list[int]:
    """``ids`` once all of them exist: an unknown one is a 404 before anything is resent,
    so the answer never hides resends that were made (and a retry would make twice)."""
    with store.read() as conn:
        known = set(conn.scalars(select(deliveries.c.id).where(deliveries.c.id.in_(ids))))
    missing = [i for i in ids if i not in known]
    if missing:
        raise HTTPException(404, f"no delivery {missing[0]}")
    return ids


def _finished(store: Any, ids: list[int]) -> None:
    """A 409 naming the first of ``ids`` still to be sent, before anything is resent: its
    resend would send the payload twice (a dry run lists it as not resent instead)."""
    with store.read() as conn:
        refused = replay.unfinished(conn, ids)
    if refused:
        raise HTTPException(409, str(refused[0]))


def _cancellable(store: Any, ids: list[int]) -> None:
    """A 409 naming the first of ``ids`` that cannot be cancelled, before any is (a dry
    run lists it as not cancelled instead)."""
    with store.read() as conn:
        refused = cancel.refusals(conn, ids)
    if refused:
        raise HTTPException(409, str(refused[0]))


def _searched(store: Any, search_in: SearchIn, limit: int) -> list[int]:
    with store.read() as conn:
        return replay.matching_messages(conn, search_in.as_filter(limit))


def jsonable(value: Any) -> Any:
    """Bytes become text when they are UTF-8, else base64, so HL7 and binary both survive."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.isoformat()
    return value
