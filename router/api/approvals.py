"""``/api/revisions`` (channel revisions, four-eyes deploy), ``/api/holds`` (held batches) and
``/api/channels/reload``. The rules are the governance services'; routes check roles too."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from router import governance
from router.api.messages import jsonable
from router.api.params import IdPath, NumberPath, NumberQuery
from router.api.security import Principal, require_role
from router.config import ConfigError
from router.governance.models import BatchState, RevisionState
from router.governance.revisions import MAX_YAML

if TYPE_CHECKING:
    from router.engine import Engine

T = TypeVar("T")
NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
viewer = require_role("viewer")
engineer = require_role("engineer")
approver = require_role("approver")


class ProposalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(pattern=NAME)
    yaml: str = Field(min_length=1, max_length=MAX_YAML)
    reason: str = Field(default="", max_length=1000)


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=1000)


class ReleaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: str = Field(pattern=NAME)
    destination: str = Field(pattern=NAME)


async def _call(work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a service function off the loop; its refusals become HTTP errors."""
    try:
        return await asyncio.to_thread(work, *args, **kwargs)
    except governance.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except (governance.FourEyesViolation, governance.RoleRequired) as exc:
        raise HTTPException(403, str(exc)) from exc
    except governance.InvalidRevision as exc:
        raise HTTPException(422, {"message": str(exc), "problems": exc.problems}) from exc
    except governance.MissingReason as exc:
        raise HTTPException(422, str(exc)) from exc
    except governance.GovernanceError as exc:
        raise HTTPException(409, str(exc)) from exc


def _out(record: Any) -> Any:
    return jsonable(dataclasses.asdict(record))


def approval_routes(engine: Engine) -> APIRouter:
    routes = APIRouter(tags=["approvals"])
    store, config = engine.store, engine.config

    @routes.get("/api/revisions")
    async def revisions(
        channel: str | None = Query(default=None, pattern=NAME),
        state: RevisionState | None = None,
        limit: int = Query(default=100, ge=1, le=500),
        _: Principal = Depends(viewer),
    ) -> list[dict[str, Any]]:
        """Channel revisions, newest first (state: proposed, approved, deployed, rejected,
        superseded, deploy-failed)."""
        found = await _call(governance.list_revisions, store, channel, state=state, limit=limit)
        return [_out(r) for r in found]

    @routes.post("/api/revisions", status_code=201)
    async def propose(body: ProposalIn, who: Principal = Depends(engineer)) -> dict[str, Any]:
        """Propose a channel file's new text; it runs once another user approves it."""
        found = await _call(
            governance.propose,
            store,
            config,
            body.channel,
            body.yaml,
            actor=who.name,
            reason=body.reason,
        )
        return _out(found)

    @routes.get("/api/revisions/{channel}/diff")
    async def diff(
        channel: str,
        number: NumberQuery = None,
        against: NumberQuery = None,
        _: Principal = Depends(viewer),
    ) -> dict[str, Any]:
        """Unified diff of a revision (default: the open proposal) against the running one."""
        return _out(await _call(governance.diff, store, channel, number, against=against))

    @routes.get("/api/revisions/{channel}/{number}")
    async def revision(
        channel: str, number: NumberPath, _: Principal = Depends(viewer)
    ) -> dict[str, Any]:
        return _out(await _call(governance.get_revision, store, channel, number))

    @routes.post("/api/revisions/{channel}/{number}/approve")
    async def approve(channel: str, number: NumberPath, who: Principal = Depends(approver)) -> Any:
        """Approve (never your own proposal); the engine deploys it within seconds."""
        found = await _call(
            governance.approve, store, config, channel, number, actor=who.name, made_by=who.made_by
        )
        engine.watcher.wake()
        return _out(found)

    @routes.post("/api/revisions/{channel}/{number}/reject")
    async def reject(
        channel: str,
        number: NumberPath,
        body: ReasonIn,
        who: Principal = Depends(require_role("approver", "engineer")),
    ) -> dict[str, Any]:
        """Reject a proposal with a reason (its author may withdraw it the same way)."""
        found = await _call(
            governance.reject, store, channel, number, actor=who.name, reason=body.reason
        )
        return _out(found)

    @routes.post("/api/revisions/{channel}/{number}/rollback", status_code=201)
    async def rollback(
        channel: str, number: NumberPath, body: ReasonIn, who: Principal = Depends(engineer)
    ) -> dict[str, Any]:
        """Propose revision ``number``'s text again: a new revision, still to be approved."""
        found = await _call(
            governance.rollback, store, config, channel, number, actor=who.name, reason=body.reason
        )
        return _out(found)

    @routes.post("/api/channels/reload")
    async def reload(who: Principal = Depends(engineer)) -> dict[str, Any]:
        """Re-read the channel files: open mode deploys changes, governed mode proposes them."""
        try:
            result = await engine.reload(who.name)
        except ConfigError as exc:
            raise HTTPException(
                422,
                {"message": "invalid channel files", "problems": [str(p) for p in exc.problems]},
            ) from exc
        except governance.RoleRequired as exc:
            raise HTTPException(403, str(exc)) from exc
        except governance.GovernanceError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"governance": config.governance, **dataclasses.asdict(result)}

    @routes.get("/api/holds")
    async def holds(
        state: BatchState | None = None, _: Principal = Depends(viewer)
    ) -> list[dict[str, Any]]:
        """Held batches: ``open`` (held, release not asked for), ``pending``, ``released``,
        ``rejected``."""
        states = (state,) if state else None
        return [_out(b) for b in await _call(governance.list_batches, store, states=states)]

    @routes.get("/api/holds/open/{channel}/{destination}")
    async def open_batch(
        channel: str, destination: str, _: Principal = Depends(viewer)
    ) -> dict[str, Any]:
        """The summary of what a release of this destination's held deliveries would cover."""
        return _out(await _call(governance.open_batch_summary, store, channel, destination))

    @routes.post("/api/holds", status_code=201)
    async def request_release(
        body: ReleaseIn, who: Principal = Depends(require_role("support", "approver"))
    ) -> dict[str, Any]:
        """Ask for release: the destination's held deliveries become a batch to approve."""
        channels = {name: c.config for name, c in engine.channels.items()}
        found = await _call(
            governance.request_release,
            store,
            channels,
            body.channel,
            body.destination,
            actor=who.name,
        )
        return _out(found)

    @routes.get("/api/holds/{batch_id}")
    async def batch(batch_id: IdPath, _: Principal = Depends(viewer)) -> dict[str, Any]:
        """A batch with its summary: counts by destination, message type and label."""
        return _out(await _call(governance.batch_summary, store, batch_id))

    @routes.post("/api/holds/{batch_id}/approve")
    async def approve_batch(batch_id: IdPath, who: Principal = Depends(approver)) -> Any:
        """Add your approval; enough distinct approvers release the batch at once."""
        found = await _call(
            governance.approve_batch, store, batch_id, actor=who.name, made_by=who.made_by
        )
        if found.state == "released":
            engine.dispatcher.notify({(found.channel, found.destination)})
        return _out(found)

    @routes.post("/api/holds/{batch_id}/reject")
    async def reject_batch(
        batch_id: IdPath, body: ReasonIn, who: Principal = Depends(approver)
    ) -> dict[str, Any]:
        """Cancel the batch's deliveries, keeping the reason on each."""
        found = await _call(
            governance.reject_batch, store, batch_id, actor=who.name, reason=body.reason
        )
        return _out(found)

    return routes
