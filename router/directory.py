"""The endpoint directory: who (an ODS code, a DoS service id or an ASID) takes which interaction
at which endpoint (a FHIR base URL, an MLLP ``host:port`` or a MESH mailbox).

Dynamic routing asks it the way Spine systems ask SDS: BaRS routing resolves a target
service, the booking proxy checks ASIDs and provider URLs, a destination with a
``directory`` lookup resolves each message's recipients (DESIGN.md §1). The table is
seeded from ``config/endpoints.yaml`` on every start and managed with ``run.py
endpoints`` and ``/api/endpoints``. Lookups read an in-memory snapshot that the engine
refreshes every few seconds, so they never wait for the database.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Connection, delete, select, update

from router import audit
from router.conditions import FieldSource
from router.config import ConfigError, ConfigProblem, DirectoryLookup
from router.config.loading import error_message, key_path, read_yaml
from router.pipeline import Unresolved
from router.store.database import Store
from router.store.ingest import utcnow
from router.store.schema import endpoints

KINDS = ("ods", "dos", "asid")
TRANSPORTS = ("fhir", "mllp", "mesh")
SCOPES = ("addressed", "all")
Kind = Literal["ods", "dos", "asid"]
Transport = Literal["fhir", "mllp", "mesh"]
Scope = Literal["addressed", "all"]
# The transport of the endpoint a destination of each kind sends to.
DESTINATION_TRANSPORT = {"http": "fhir", "mllp": "mllp", "mesh": "mesh"}

# FHIR identifier systems of each kind, compared without scheme and case (both occur).
_SYSTEMS = {
    "fhir.nhs.uk/id/ods-organization-code": "ods",
    "fhir.nhs.uk/id/ods-site-code": "ods",
    "fhir.nhs.uk/id/dos-service-id": "dos",
    "fhir.nhs.uk/id/nhsspineasid": "asid",
}
SYSTEM_OF = {
    "ods": "https://fhir.nhs.uk/Id/ods-organization-code",
    "dos": "https://fhir.nhs.uk/Id/dos-service-id",
    "asid": "https://fhir.nhs.uk/Id/nhsSpineASID",
}
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")
_MAILBOX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def system_kind(system: str | None) -> str | None:
    """The directory kind of a FHIR identifier system, or None for any other system."""
    if not system:
        return None
    bare = re.sub(r"^https?://", "", system.strip().lower()).rstrip("/")
    return _SYSTEMS.get(bare)


@dataclass(frozen=True, slots=True)
class Key:
    """One organisation, service or system, written ``ods:RYE``, ``dos:111111111``..."""

    kind: str
    identifier: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.identifier}"


def make_key(kind: str, identifier: str) -> Key:
    kind = kind.strip().lower()
    identifier = identifier.strip()
    if kind not in KINDS:
        raise ValueError(f"unknown identifier kind {kind!r}: use one of {', '.join(KINDS)}")
    if not _IDENTIFIER.match(identifier):
        raise ValueError(f"{identifier!r} is not a valid {kind} identifier")
    return Key(kind, identifier.upper() if kind == "ods" else identifier)


def parse_key(text: str, default_kind: str | None = None) -> Key:
    """``ods:RYE``, a FHIR ``system|value`` of a known system, or a bare ``default_kind`` value."""
    text = text.strip()
    if "|" in text:
        system, _, value = text.rpartition("|")
        kind = system_kind(system)
        if kind is None:
            raise ValueError(f"{system!r} is not an ODS, DoS or ASID identifier system")
        return make_key(kind, value)
    kind, sep, value = text.partition(":")
    if sep and kind.lower() in KINDS:
        return make_key(kind, value)
    if default_kind is None:
        raise ValueError(f"{text!r} names no kind: write ods:<code>, dos:<id> or asid:<asid>")
    return make_key(default_kind, text)


def check_address(transport: str, address: str) -> str:
    """The address if it suits the transport; ValueError naming what is expected otherwise."""
    address = address.strip()
    if transport == "fhir":
        if not re.match(r"^https?://[^/\s]+", address):
            raise ValueError(f"a FHIR endpoint is an http(s) base URL, not {address!r}")
        return address.rstrip("/")
    if transport == "mllp":
        match = _HOST_PORT.match(address)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"an MLLP endpoint is host:port, not {address!r}")
        return address
    if transport == "mesh":
        if not _MAILBOX.match(address):
            raise ValueError(f"a MESH endpoint is a mailbox id, not {address!r}")
        return address.upper()
    raise ValueError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")


def split_host_port(address: str) -> tuple[str, int]:
    match = _HOST_PORT.match(address)
    if match is None:
        raise ValueError(f"{address!r} is not host:port")
    return match["host"].strip("[]"), int(match["port"])


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str
    identifier: str
    interaction: str
    transport: str
    address: str
    scope: str = "addressed"
    name: str = ""
    origin: str = "operator"

    @property
    def key(self) -> Key:
        return Key(self.kind, self.identifier)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_endpoint(
    key: Key,
    interaction: str,
    transport: str,
    address: str,
    *,
    scope: str = "addressed",
    name: str = "",
    origin: str = "operator",
) -> Endpoint:
    """A checked endpoint: ValueError names the first thing wrong."""
    interaction = interaction.strip()
    if not interaction or len(interaction) > 255:
        raise ValueError("an interaction is 1 to 255 characters")
    if scope not in SCOPES:
        raise ValueError(f"scope is one of {', '.join(SCOPES)}, not {scope!r}")
    return Endpoint(
        key.kind,
        key.identifier,
        interaction,
        transport,
        check_address(transport, address),
        scope,
        name.strip()[:255],
        origin,
    )


# --- endpoints.yaml ----------------------------------------------------------


class _EntryModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ods: str | None = None
    dos: str | None = None
    asid: str | None = None
    name: str = ""
    interactions: list[str] = Field(min_length=1)
    fhir: str | None = None
    mllp: str | None = None
    mesh: str | None = None
    scope: Scope = "addressed"

    @model_validator(mode="after")
    def _one_each(self) -> _EntryModel:
        for group in (KINDS, TRANSPORTS):
            present = [n for n in group if getattr(self, n) is not None]
            if len(present) != 1:
                raise ValueError(f"an entry needs exactly one of {', '.join(group)}")
        return self

    def endpoints(self) -> list[Endpoint]:
        kind = next(k for k in KINDS if getattr(self, k) is not None)
        transport = next(t for t in TRANSPORTS if getattr(self, t) is not None)
        key = make_key(kind, str(getattr(self, kind)))
        return [
            make_endpoint(
                key,
                interaction,
                transport,
                str(getattr(self, transport)),
                scope=self.scope,
                name=self.name,
                origin="config",
            )
            for interaction in self.interactions
        ]


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[_EntryModel] = Field(default_factory=list)


def load_endpoints_file(path: Path) -> list[Endpoint]:
    """Every endpoint in ``path``; a ConfigError names the file, entry and problem."""
    data = read_yaml(path)
    try:
        model = _FileModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            ConfigProblem(str(path), key_path(e["loc"]), error_message(e)) for e in exc.errors()
        ) from exc
    found: dict[tuple[str, str, str, str], Endpoint] = {}
    problems = []
    for index, entry in enumerate(model.endpoints):
        try:
            for endpoint in entry.endpoints():
                unique = (
                    endpoint.kind,
                    endpoint.identifier,
                    endpoint.interaction,
                    endpoint.transport,
                )
                if unique in found:
                    where = f"{endpoint.key} {endpoint.interaction} ({endpoint.transport})"
                    raise ValueError(f"{where} is listed twice")
                found[unique] = endpoint
        except ValueError as exc:
            problems.append(ConfigProblem(str(path), f"endpoints[{index}]", str(exc)))
    if problems:
        raise ConfigError(problems)
    return list(found.values())


# --- the table -------------------------------------------------------------

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
    if conn.execute(update(endpoints).where(*where).values(**values)).rowcount == 0:
        conn.execute(endpoints.insert().values(**values))
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


# --- lookups ---------------------------------------------------------------


@dataclass(frozen=True)
class _Snapshot:
    by_key: dict[tuple[str, str, str, str], Endpoint]
    broadcast: dict[tuple[str, str], tuple[Endpoint, ...]]
    registered: frozenset[tuple[Key, str]]


class Directory:
    """Lookups over a snapshot of the table; ``refresh`` reloads it (the engine does, often)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._store.read() as conn:
            rows = [_endpoint(r) for r in conn.execute(select(endpoints))]
        by_key = {(x.kind, x.identifier, x.interaction, x.transport): x for x in rows}
        broadcast: dict[tuple[str, str], list[Endpoint]] = {}
        for x in rows:
            if x.scope == "all":
                broadcast.setdefault((x.interaction, x.transport), []).append(x)
        self._snapshot = _Snapshot(
            by_key,
            {k: tuple(v) for k, v in broadcast.items()},
            frozenset((x.key, x.interaction) for x in rows),
        )

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                if self._snapshot is None:
                    self.refresh()
                snapshot = self._snapshot
        assert snapshot is not None
        return snapshot

    def lookup(self, key: Key, interaction: str, transport: str) -> Endpoint | None:
        """The endpoint where ``key`` takes ``interaction`` over ``transport``."""
        return self._current().by_key.get((key.kind, key.identifier, interaction, transport))

    def subscribers(self, interaction: str, transport: str) -> tuple[Endpoint, ...]:
        """Every endpoint subscribed to all messages of ``interaction`` (scope ``all``)."""
        return self._current().broadcast.get((interaction, transport), ())

    def registered(self, key: Key, interaction: str) -> bool:
        """Whether ``key`` has an entry for ``interaction`` over any transport.

        The proxy's check that a calling system (its ASID) takes part in an interaction.
        """
        return (key, interaction) in self._current().registered

    def addresses(self, lookup: DirectoryLookup, message: FieldSource, kind: str) -> list[str]:
        """The pipeline's resolver: the address of every recipient of a ``kind`` destination."""
        transport = DESTINATION_TRANSPORT[kind]
        return [endpoint.address for endpoint in recipients(self, lookup, message, transport)]


def recipients(
    directory: Directory, lookup: DirectoryLookup, message: FieldSource, transport: str
) -> list[Endpoint]:
    """The endpoints one message goes to under ``lookup``, each once, in a stable order.

    Every identifier the target path finds must resolve: a message silently delivered to
    fewer recipients than it names would be lost to the others.
    """
    found: list[Endpoint] = []
    if lookup.target is not None:
        for value in message.values(lookup.target):
            try:
                key = parse_key(value, lookup.kind)
            except ValueError as exc:
                raise Unresolved(f"{lookup.target}: {exc}") from exc
            endpoint = directory.lookup(key, lookup.interaction, transport)
            if endpoint is None:
                raise Unresolved(
                    f"no {transport} endpoint for {key} and interaction "
                    f"{lookup.interaction!r} in the directory"
                )
            found.append(endpoint)
    if lookup.subscribers:
        found.extend(directory.subscribers(lookup.interaction, transport))
    if not found:
        where = f"nothing at {lookup.target}" if lookup.target else "no target"
        raise Unresolved(
            f"no recipient for interaction {lookup.interaction!r}: {where} "
            f"and no {transport} subscriber in the directory"
        )
    return list({endpoint.address: endpoint for endpoint in found}.values())
