"""Held deliveries and their release by several approvers (SPI's summary-report review).

A destination with ``hold: {approvals: N}`` creates its deliveries ``held``: the
dispatcher never claims them. The held deliveries of one destination that are in no
batch form its *open* batch. Asking for release turns exactly those deliveries into a
*pending* batch (each is stamped with the batch's id, so later messages start the next
open batch), fixes N and records who asked (the batch's creator) and who created or last
changed the channel (its owner: the author of its running revision).

The batch is released, its deliveries ``queued``, once N distinct approvers have
approved it, at least one of them is not the channel's owner and at least one is not the
creator: neither can release it alone, even where N is 1. Rejecting cancels every
delivery of the batch with the reason. Each step is an audit event.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, select, update

from router import audit
from router.config import ChannelConfig
from router.governance.actors import (
    credential_maker_among,
    made_by_author,
    person,
    refuse,
    require_role,
)
from router.governance.deploy import channel_owner
from router.governance.deploy_checks import lapsed_approvers
from router.governance.models import (
    OPEN,
    PENDING,
    REJECTED,
    RELEASED,
    BatchSummary,
    FourEyesViolation,
    GovernanceError,
    HeldBatch,
    MissingReason,
    NotFound,
)
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.locks import hold_key
from router.store.schema import HELD, deliveries, hold_approvals, hold_batches, messages

b, d = hold_batches.c, deliveries.c
# Held deliveries whose destination no longer holds (its channel changed) still need people.
DEFAULT_APPROVALS = 2
REQUESTERS = ("support", "approver")


def release_shortfall(
    required: int,
    approvers: set[str],
    *,
    owner: str | None,
    creator: str,
    lapsed: Mapping[str, str] | None = None,
) -> str | None:
    """What a batch still needs before release, or None when it may go (the four-eyes rule).
    An approval in ``lapsed`` (its approver lost the role or was disabled since; the value
    says which) does not count."""
    lapsed = lapsed or {}
    missing = []
    people = {person(name) for name in approvers if name not in lapsed}
    if len(people) < required:
        missing.append(f"{required - len(people)} more distinct approver(s)")
    if owner is not None and people and people <= {person(owner)}:
        missing.append(f"an approver other than {owner}, who last changed the channel")
    if people <= {person(creator)}:
        missing.append(f"an approver other than {creator}, who asked for the release")
    if missing and lapsed:
        missing.append(f"approvals that no longer count: {'; '.join(lapsed.values())}")
    return "; ".join(missing) or None


def list_batches(
    store: Store, *, states: tuple[str, ...] | None = None, limit: int = 200
) -> list[HeldBatch]:
    """Open batches (one per destination with held deliveries) and stored ones, newest first."""
    found: list[HeldBatch] = []
    with store.read() as conn:
        if states is None or OPEN in states:
            found.extend(_open_batches(conn))
        query = select(hold_batches).order_by(b.id.desc()).limit(limit)
        if states is not None:
            query = query.where(b.state.in_(states))
        rows = list(conn.execute(query))
        approvals = _approvers(conn, [row.id for row in rows])
        pending = [
            name for row in rows if row.state == PENDING for name in approvals.get(row.id, ())
        ]
        lapsed = lapsed_approvers(conn, pending)
        found.extend(_batch(row, approvals.get(row.id, ()), lapsed) for row in rows)
    return found


def get_batch(store: Store, batch_id: int) -> HeldBatch:
    with store.read() as conn:
        return _load(conn, batch_id)


def request_release(
    store: Store,
    channels: Mapping[str, ChannelConfig],
    channel: str,
    destination: str,
    *,
    actor: str,
) -> HeldBatch:
    """Make the destination's open batch a pending batch awaiting approvals; ``actor`` is
    its creator. ``channels`` (the running configuration) gives ``hold.approvals``."""
    config = channels.get(channel)
    target = config.destinations.get(destination) if config is not None else None
    required = target.hold.approvals if target is not None and target.hold else DEFAULT_APPROVALS
    now = utcnow()
    with store.begin() as conn:
        require_role(conn, actor, *REQUESTERS)
        hold_key(conn, f"holds/{channel}/{destination}")  # a request meanwhile sees this one
        waiting = conn.scalar(
            select(b.id).where(
                b.channel == channel, b.destination == destination, b.state == PENDING
            )
        )
        if waiting is not None:
            raise GovernanceError(f"batch #{waiting} of {channel}/{destination} awaits a decision")
        batch_id = conn.execute(
            hold_batches.insert()
            .values(
                channel=channel,
                destination=destination,
                state=PENDING,
                required=required,
                deliveries=0,
                channel_owner=channel_owner(conn, channel),
                requested_by=actor,
                requested_at=now,
            )
            .returning(b.id)
        ).scalar_one()
        count = conn.execute(
            update(deliveries)
            .where(*_open(channel, destination))
            .values(hold_batch_id=batch_id, updated_at=now)
        ).rowcount
        if not count:
            raise NotFound(f"nothing is held for {channel}/{destination}")
        conn.execute(update(hold_batches).where(b.id == batch_id).values(deliveries=count))
        audit.append(
            conn,
            actor,
            "hold.request",
            f"hold:{batch_id}",
            {"channel": channel, "destination": destination, "deliveries": count},
        )
        return _load(conn, batch_id)


def batch_summary(store: Store, batch_id: int) -> BatchSummary:
    with store.read() as conn:
        batch = _load(conn, batch_id)
        return _summary(conn, batch, (d.hold_batch_id == batch_id,))


def open_batch_summary(store: Store, channel: str, destination: str) -> BatchSummary:
    with store.read() as conn:
        count = conn.scalar(select(func.count()).where(*_open(channel, destination))) or 0
        batch = HeldBatch(None, channel, destination, OPEN, count)
        return _summary(conn, batch, _open(channel, destination))


class _MadeByInvolved(Exception):
    """An approval's credential was made by someone the batch's rule counts (raised inside
    the transaction to roll it back; refused and audited outside it)."""

    def __init__(self, details: dict[str, Any], work: str) -> None:
        self.details = details
        self.work = work


def approve_batch(
    store: Store, batch_id: int, *, actor: str, made_by: str | None = None
) -> HeldBatch:
    """Add ``actor``'s approval; release the batch when the rule is met (see module doc).

    Refused when the credential in use (``made_by``: the token's issuer, the session's
    password setter) was made by the batch's requester, the channel's owner or one of its
    approvers: that person, not ``actor``, would be deciding again."""
    try:
        return _approve_batch(store, batch_id, actor=actor, made_by=made_by)
    except _MadeByInvolved as exc:
        message = made_by_author(actor, exc.details["credential_made_by"], exc.work)
        raise refuse(
            store, actor, "hold.approve-refused", f"hold:{batch_id}", exc.details, message
        ) from None


def _involved(batch_id: int, row: Any, maker: str) -> str:
    """What ``maker`` did to batch ``batch_id``, for the refusal."""
    if person(maker) == person(row.requested_by):
        return f"asked for the release of batch #{batch_id}"
    if row.channel_owner and person(maker) == person(row.channel_owner):
        return f"last changed channel {row.channel}, whose batch #{batch_id} this is"
    return f"approved batch #{batch_id} already"


def _approve_batch(store: Store, batch_id: int, *, actor: str, made_by: str | None) -> HeldBatch:
    now = utcnow()
    with store.begin() as conn:
        require_role(conn, actor, "approver")
        row = _pending(conn, batch_id)
        approvers = set(_approvers(conn, [batch_id]).get(batch_id, ()))
        if person(actor) in {person(name) for name in approvers}:
            raise FourEyesViolation(f"{actor} has approved batch #{batch_id} already")
        involved = [row.requested_by, *([row.channel_owner] if row.channel_owner else [])]
        maker = credential_maker_among(actor, made_by, [*involved, *approvers])
        if maker is not None:
            details = {"requested_by": row.requested_by, "credential_made_by": made_by}
            raise _MadeByInvolved(details, _involved(batch_id, row, maker))
        conn.execute(
            hold_approvals.insert().values(batch_id=batch_id, approver=actor, approved_at=now)
        )
        approvers.add(actor)
        audit.append(
            conn, actor, "hold.approve", f"hold:{batch_id}", {"approvers": sorted(approvers)}
        )
        # Each approval counts only while its approver still may approve (checked now, at
        # release, not only when it was given).
        lapsed = lapsed_approvers(conn, approvers)
        rule = {"owner": row.channel_owner, "creator": row.requested_by}
        short = release_shortfall(row.required, approvers, lapsed=lapsed, **rule)
        if short is not None and release_shortfall(row.required, approvers, **rule) is None:
            audit.append(
                conn,
                actor,
                "hold.release-refused",
                f"hold:{batch_id}",
                {"approvers": sorted(approvers), "lapsed": lapsed, "waiting_for": short},
            )
        if short is None:
            released = conn.execute(
                update(deliveries)
                .where(d.hold_batch_id == batch_id, d.status == HELD)
                .values(status="queued", next_attempt_at=now, updated_at=now)
            ).rowcount
            _decide(conn, batch_id, RELEASED, actor, None)
            audit.append(
                conn,
                actor,
                "hold.release",
                f"hold:{batch_id}",
                {"deliveries": released, "approvers": sorted(approvers)},
            )
        return _load(conn, batch_id)


def reject_batch(store: Store, batch_id: int, *, actor: str, reason: str) -> HeldBatch:
    """Cancel every delivery of the batch, keeping ``reason`` on each."""
    if not reason.strip():
        raise MissingReason("a rejection needs a reason, and none was given")
    now = utcnow()
    with store.begin() as conn:
        require_role(conn, actor, "approver")
        _pending(conn, batch_id)
        cancelled = conn.execute(
            update(deliveries)
            .where(d.hold_batch_id == batch_id, d.status == HELD)
            .values(
                status="cancelled",
                last_error=f"release rejected by {actor}: {reason}",
                updated_at=now,
            )
        ).rowcount
        _decide(conn, batch_id, REJECTED, actor, reason)
        audit.append(
            conn,
            actor,
            "hold.reject",
            f"hold:{batch_id}",
            {"reason": reason, "cancelled": cancelled},
        )
        return _load(conn, batch_id)


def _open(channel: str, destination: str) -> tuple[Any, ...]:
    return (
        d.channel == channel,
        d.destination == destination,
        d.status == HELD,
        d.hold_batch_id.is_(None),
    )


def _open_batches(conn: Connection) -> list[HeldBatch]:
    rows = conn.execute(
        select(d.channel, d.destination, func.count().label("n"))
        .where(d.status == HELD, d.hold_batch_id.is_(None))
        .group_by(d.channel, d.destination)
        .order_by(d.channel, d.destination)
    )
    return [HeldBatch(None, row.channel, row.destination, OPEN, row.n) for row in rows]


def _pending(conn: Connection, batch_id: int) -> Any:
    """The pending batch's row, locked until the transaction ends: two approvers deciding
    at once on PostgreSQL must each see the other's approval, or neither releases."""
    row = conn.execute(select(hold_batches).where(b.id == batch_id).with_for_update()).first()
    if row is None:
        raise NotFound(f"no hold batch #{batch_id}")
    if row.state != PENDING:
        raise GovernanceError(f"batch #{batch_id} is {row.state} already")
    return row


def _decide(conn: Connection, batch_id: int, state: str, actor: str, reason: str | None) -> None:
    done = conn.execute(
        update(hold_batches)
        .where(b.id == batch_id, b.state == PENDING)
        .values(state=state, decided_by=actor, decided_at=utcnow(), reason=reason)
    ).rowcount
    if not done:
        raise GovernanceError(f"batch #{batch_id} was decided meanwhile")


def _approvers(conn: Connection, ids: list[int]) -> dict[int, tuple[str, ...]]:
    found: dict[int, list[str]] = {}
    if ids:
        a = hold_approvals.c
        for row in conn.execute(
            select(a.batch_id, a.approver).where(a.batch_id.in_(ids)).order_by(a.id)
        ):
            found.setdefault(row.batch_id, []).append(row.approver)
    return {k: tuple(v) for k, v in found.items()}


def _load(conn: Connection, batch_id: int) -> HeldBatch:
    row = conn.execute(select(hold_batches).where(b.id == batch_id)).first()
    if row is None:
        raise NotFound(f"no hold batch #{batch_id}")
    approvers = _approvers(conn, [batch_id]).get(batch_id, ())
    return _batch(row, approvers, lapsed_approvers(conn, approvers))


def _batch(row: Any, approvers: tuple[str, ...], lapsed: Mapping[str, str]) -> HeldBatch:
    waiting = None
    if row.state == PENDING:
        waiting = release_shortfall(
            row.required,
            set(approvers),
            owner=row.channel_owner,
            creator=row.requested_by,
            lapsed={name: why for name, why in lapsed.items() if name in approvers},
        )
    return HeldBatch(
        id=row.id,
        channel=row.channel,
        destination=row.destination,
        state=row.state,
        deliveries=row.deliveries,
        required=row.required,
        approvers=approvers,
        channel_owner=row.channel_owner,
        requested_by=row.requested_by,
        requested_at=row.requested_at,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        reason=row.reason,
        waiting_for=waiting,
    )


def _summary(conn: Connection, batch: HeldBatch, where: tuple[Any, ...]) -> BatchSummary:
    """Counts in one pass over the batch's rows (their labels are small JSON objects)."""
    by_destination: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    labels: dict[str, Counter[str]] = {}
    query = select(d.destination, d.address, d.hold_labels, messages.c.message_type).join(
        messages, messages.c.id == d.message_id
    )
    for row in conn.execute(query.where(*where)):
        name = f"{row.destination} ({row.address})" if row.address else row.destination
        by_destination[name] += 1
        by_type[row.message_type or "(none)"] += 1
        for key, value in (json.loads(row.hold_labels) if row.hold_labels else {}).items():
            labels.setdefault(str(key), Counter())[str(value)] += 1
    return BatchSummary(
        batch,
        dict(by_destination.most_common()),
        dict(by_type.most_common()),
        {key: dict(counts.most_common()) for key, counts in sorted(labels.items())},
    )
