"""The directory table: list, get, put and remove endpoints (each change audited), and seed
it from ``config/endpoints.yaml`` without touching what operators added.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select

from router import audit
from router.directory.entries import Endpoint
from router.directory.keys import Key
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import endpoints
from router.store.upsert import upsert

e = endpoints.c


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        row.kind,
        row.identifier,
        row.interaction,
        row.transport,
        row.address,
        row.scope,
        row.name,
        row.origin,
    )


def all_endpoints(conn: Connection) -> list[Endpoint]:
    """Every entry of the table, as endpoints (what a lookup snapshot is built from)."""
    return [_endpoint(row) for row in conn.execute(select(endpoints))]


def list_endpoints(
    conn: Connection,
    *,
    key: Key | None = None,
    interaction: str | None = None,
    transport: str | None = None,
) -> list[dict[str, Any]]:
    query = select(endpoints).order_by(e.kind, e.identifier, e.interaction, e.transport)
    if key is not None:
        query = query.where(e.kind == key.kind, e.identifier == key.identifier)
    if interaction:
        query = query.where(e.interaction == interaction)
    if transport:
        query = query.where(e.transport == transport)
    return [dict(row._mapping) for row in conn.execute(query)]


def get_endpoint(conn: Connection, endpoint_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(endpoints).where(e.id == endpoint_id)).first()
    return dict(row._mapping) if row else None


def put_endpoint(conn: Connection, endpoint: Endpoint, *, actor: str) -> dict[str, Any]:
    """Add an endpoint, or change the address, scope and name of the one with its key."""
    now = utcnow()
    values = {**endpoint.as_dict(), "updated_at": now, "updated_by": actor}
    where = (
        e.kind == endpoint.kind,
        e.identifier == endpoint.identifier,
        e.interaction == endpoint.interaction,
        e.transport == endpoint.transport,
    )
    upsert(conn, endpoints, values, key=("kind", "identifier", "interaction", "transport"))
    audit.append(conn, actor, "endpoint.put", f"endpoint:{endpoint.key}", endpoint.as_dict())
    row = conn.execute(select(endpoints).where(*where)).one()
    return dict(row._mapping)


def remove_endpoints(
    conn: Connection,
    key: Key,
    *,
    actor: str,
    interaction: str | None = None,
    transport: str | None = None,
) -> list[dict[str, Any]]:
    """Remove the key's endpoints (of one interaction / transport when given); those removed."""
    gone = list_endpoints(conn, key=key, interaction=interaction, transport=transport)
    if gone:
        conn.execute(delete(endpoints).where(e.id.in_([row["id"] for row in gone])))
        audit.append(
            conn,
            actor,
            "endpoint.remove",
            f"endpoint:{key}",
            {"removed": [_public(row) for row in gone]},
        )
    return gone


def remove_endpoint_id(conn: Connection, endpoint_id: int, *, actor: str) -> dict[str, Any] | None:
    row = get_endpoint(conn, endpoint_id)
    if row is not None:
        conn.execute(delete(endpoints).where(e.id == endpoint_id))
        audit.append(
            conn,
            actor,
            "endpoint.remove",
            f"endpoint:{row['kind']}:{row['identifier']}",
            {"removed": [_public(row)]},
        )
    return row


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("updated_at",)}


@dataclass(frozen=True)
class SeedResult:
    added: int
    updated: int
    removed: int


def seed(store: Store, wanted: Iterable[Endpoint], *, actor: str = "endpoints.yaml") -> SeedResult:
    """Make the table's configuration entries those of the file; operators' entries stay.

    Idempotent: a second run with the same file changes nothing. An operator's entry
    with the same key as a file entry is taken over by the file.
    """
    wanted_by_key = {(x.kind, x.identifier, x.interaction, x.transport): x for x in wanted}
    added = updated = removed = 0
    with store.begin() as conn:
        existing = {
            (r.kind, r.identifier, r.interaction, r.transport): r
            for r in conn.execute(select(endpoints))
        }
        for unique, endpoint in wanted_by_key.items():
            row = existing.get(unique)
            if row is None:
                added += 1
            elif _endpoint(row) != endpoint:
                updated += 1
            else:
                continue
            put_endpoint(conn, endpoint, actor=actor)
        stale = [
            r.id for u, r in existing.items() if r.origin == "config" and u not in wanted_by_key
        ]
        if stale:
            removed = len(stale)
            conn.execute(delete(endpoints).where(e.id.in_(stale)))
            audit.append(conn, actor, "endpoint.remove", "endpoint:*", {"stale_ids": stale})
    return SeedResult(added, updated, removed)
