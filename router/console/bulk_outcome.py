"""What a bulk reprocess, resend or cancel from the console did, read back from the store.

A bulk action answers with a redirect (post/redirect/get) to a page that names the copies
it made (a cancel: the deliveries it cancelled), so reloading that page shows the result
again and never repeats the action. The page takes only those ids from its address: what
it says of them (what each copies, its message, the reason) is read from the store and the
audit log, so a link cannot make it claim anything that did not happen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from router.replay import ReplayResult
from router.store.database import Store
from router.store.queries import parse_id
from router.store.schema import audit_events, deliveries, messages


@dataclass(frozen=True)
class Done:
    """One item done: what was copied (``description``) and the message to look at."""

    description: str
    message_id: int


def encode_ids(ids: list[int]) -> str:
    """``ids`` as runs (``12-15,20``): a bulk action's copies are mostly consecutive, and a
    thousand of them stay a short address."""
    runs: list[list[int]] = []
    for i in sorted(set(ids)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def decode_ids(text: str, most: int) -> list[int]:
    """The ids of ``encode_ids``'s text, at most ``most`` of them; a part that is not an
    id or a run of ids is left out."""
    found: list[int] = []
    for part in text.split(","):
        first, run, last = part.partition("-")
        low, high = parse_id(first), parse_id(last if run else first)
        if low is None or high is None or high < low:
            continue
        found.extend(range(low, min(high, low + most - len(found) - 1) + 1))
        if len(found) >= most:
            break
    return found


def copies_made(store: Store, action: str, results: list[ReplayResult]) -> list[int]:
    """The ids of the copies ``results`` made: delivery ids of a resend, message ids of a
    reprocess (whose results name the copies by URN); a cancel's, the deliveries cancelled."""
    if action == "cancel":
        return [int(r.original) for r in results]
    made = [r.copy for r in results if r.copy]
    if action == "resend" or not made:
        return [int(c) for c in made]
    with store.read() as conn:
        return list(conn.scalars(select(messages.c.id).where(messages.c.uuid.in_(made))))


def outcome(store: Store, action: str, copies: list[int]) -> tuple[list[Done], list[str]]:
    """Each of ``copies`` that the action made (others are left out), and the reasons the
    audit log gives for them (one, unless the address joins runs of several actions)."""
    with store.read() as conn:
        if action == "cancel":
            d = deliveries.c
            query = (
                select(d.id, d.channel, d.destination, d.message_id, messages.c.uuid)
                .join(messages, messages.c.id == d.message_id)
                .where(d.id.in_(copies), d.status == "cancelled")
                .order_by(d.id)
            )
            rows = conn.execute(query).all()
            done = [
                Done(f"cancelled delivery {r.id} to {r.channel}/{r.destination}", r.message_id)
                for r in rows
            ]
            targets = {f"urn:tie:message:{r.uuid}" for r in rows}
            marks = {r.id for r in rows}
            key = "delivery"
        elif action == "resend":
            d = deliveries.c
            query = (
                select(d.id, d.resent_from, d.message_id, messages.c.uuid)
                .join(messages, messages.c.id == d.message_id)
                .where(d.id.in_(copies), d.resent_from.is_not(None))
                .order_by(d.id)
            )
            rows = conn.execute(query).all()
            done = [Done(f"resent delivery {r.resent_from} as {r.id}", r.message_id) for r in rows]
            targets = {f"urn:tie:message:{r.uuid}" for r in rows}
            marks = {r.id for r in rows}
            key = "new_delivery"
        else:
            m = messages.c
            query = (
                select(m.id, m.uuid, m.reprocessed_from)
                .where(m.id.in_(copies), m.reprocessed_from.is_not(None))
                .order_by(m.id)
            )
            rows = conn.execute(query).all()
            done = [Done(f"reprocessed #{r.reprocessed_from} as {r.uuid}", r.id) for r in rows]
            originals = [r.reprocessed_from for r in rows]
            targets = {
                f"urn:tie:message:{uuid}"
                for uuid in conn.scalars(select(m.uuid).where(m.id.in_(originals)))
            }
            marks = {f"urn:tie:message:{r.uuid}" for r in rows}
            key = "copy"
        a = audit_events.c
        events = conn.scalars(
            select(a.details).where(a.action == action, a.target.in_(targets)).order_by(a.id)
        )
        reasons = _reasons((json.loads(e) for e in events), key, marks)
    return done, reasons


def _reasons(events: Any, key: str, marks: set[Any]) -> list[str]:
    """The distinct reasons of the events whose ``key`` is one of ``marks``, in order."""
    found: dict[str, None] = {}
    for details in events:
        if details.get(key) in marks:
            found.setdefault(str(details.get("reason", "")), None)
    return list(found)
