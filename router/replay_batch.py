"""What a batch of replays and a batch of cancels both do (router/replay.py,
router/cancel.py): read rows by many ids at once, refuse an unknown id or a missing
reason, tell a synchronous exchange's delivery (never queued, so neither resent nor
cancelled), and name each row's message for its audit event."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, Select, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from router.fhir.exchange import FORWARD, PROVIDER
from router.store.schema import messages


@dataclass(frozen=True)
class ReplayResult:
    original: str
    copy: str | None
    description: str


# A synchronous exchange's delivery: its destination, and what its message's source
# metadata holds that no other source's does (router/fhir/routing.py, router/fhir/proxy.py).
# A queued channel may name a destination ``forward`` too: that one is resent.
SYNCHRONOUS = {FORWARD: "bars", PROVIDER: "method"}


def is_synchronous(destination: str, source: Mapping[str, Any] | None) -> bool:
    """Whether a delivery to ``destination`` of a message from ``source`` (its source
    metadata) is a synchronous exchange's, which is never resent."""
    marker = SYNCHRONOUS.get(destination)
    return marker is not None and marker in (source or {})


def synchronous_of(conn: Connection, rows: list[Any]) -> set[int]:
    """Which of the deliveries ``rows`` are synchronous exchanges (``SynchronousExchange``)."""
    named = [r for r in rows if r.destination in SYNCHRONOUS]
    if not named:
        return set()
    m = messages.c
    query = select(m.id, m.source).where(m.id.in_({r.message_id for r in named}))
    sources = {i: json.loads(source or "{}") for i, source in conn.execute(query)}
    return {r.id for r in named if is_synchronous(r.destination, sources.get(r.message_id))}


# Ids bound in one statement: psycopg sends at most 65,535 parameters, and a bulk replay
# from the CLI reaches 100,000 messages (and more deliveries).
IDS_A_STATEMENT = 10_000


def rows_in(conn: Connection, query: Select[Any], column: Any, ids: Iterable[int]) -> list[Any]:
    """``query``'s rows where ``column`` is one of ``ids``, asked in parts small enough to
    bind in one statement (ids sorted, so a query ordered by ``column`` stays ordered).

    PostgreSQL takes them all as one array: an IN list is rendered and bound one
    placeholder an id, which cost a 10,000-message dry run seconds of client CPU."""
    ordered = sorted(set(ids))
    if conn.dialect.name == "postgresql":
        every = bindparam("ids", ordered, type_=ARRAY(BigInteger))
        return list(conn.execute(query.where(column == any_(every))))
    return [
        row
        for start in range(0, len(ordered), IDS_A_STATEMENT)
        for row in conn.execute(query.where(column.in_(ordered[start : start + IDS_A_STATEMENT])))
    ]


def require_present(wanted: list[int], found: dict[int, Any], kind: str, skip: bool) -> list[Any]:
    """The rows of ``wanted`` in its order; LookupError for the first not ``found``, unless
    ``skip``."""
    if not skip:
        for i in wanted:
            if i not in found:
                raise LookupError(f"no {kind} {'#' if kind == 'message' else ''}{i}")
    return [found[i] for i in wanted if i in found]


def message_uuids(conn: Connection, rows: Iterable[Any]) -> dict[int, str]:
    """The UUID of each delivery row's message, by message id: audit events name a message
    by its URN (``urn:tie:message:<uuid>``)."""
    m = messages.c
    ids = {r.message_id for r in rows}
    return dict(conn.execute(select(m.id, m.uuid).where(m.id.in_(ids))).all())


def require_reason(reason: str) -> None:
    if not reason or not reason.strip():
        raise ValueError("a reason is required")
