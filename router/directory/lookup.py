"""Directory lookups: an in-memory snapshot of the table, and the recipients of a message.

Dynamic routing asks it the way Spine systems ask SDS: BaRS routing resolves a target
service, the booking proxy checks ASIDs and provider URLs, a destination with a
``directory`` lookup resolves each message's recipients (a dynamic router / recipient
list). Lookups never wait for the database: the engine refreshes the snapshot every few
seconds and after each change it makes itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from router.conditions import FieldSource
from router.config import DirectoryLookup
from router.directory.entries import Endpoint
from router.directory.keys import Key, parse_key
from router.directory.records import all_endpoints
from router.pipeline import Unresolved
from router.store.database import Store

# The transport of the endpoint a destination of each kind sends to.
DESTINATION_TRANSPORT = {"http": "fhir", "mllp": "mllp", "mesh": "mesh"}


@dataclass(frozen=True)
class _Snapshot:
    by_key: dict[tuple[str, str, str, str], Endpoint]
    broadcast: dict[tuple[str, str], tuple[Endpoint, ...]]
    registered: frozenset[tuple[Key, str]]


class Directory:
    """Lookups over a snapshot of the table; ``refresh`` reloads it (the engine does, often)."""

    def __init__(self, store: Store | None, endpoints: list[Endpoint] | None = None) -> None:
        """Over ``store``'s table; or, with no store, over ``endpoints`` alone (channel tests
        resolve recipients that way, with no database)."""
        self._store = store
        self._snapshot = _snapshot(endpoints) if endpoints is not None else None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        if self._store is None:
            self._snapshot = self._snapshot or _snapshot([])
            return
        with self._store.read() as conn:
            self._snapshot = _snapshot(all_endpoints(conn))

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


def _snapshot(rows: list[Endpoint]) -> _Snapshot:
    by_key = {(x.kind, x.identifier, x.interaction, x.transport): x for x in rows}
    broadcast: dict[tuple[str, str], list[Endpoint]] = {}
    for x in rows:
        if x.scope == "all":
            broadcast.setdefault((x.interaction, x.transport), []).append(x)
    return _Snapshot(
        by_key,
        {k: tuple(v) for k, v in broadcast.items()},
        frozenset((x.key, x.interaction) for x in rows),
    )


def recipients(
    directory: Directory, lookup: DirectoryLookup, message: FieldSource, transport: str
) -> list[Endpoint]:
    """The endpoints one message goes to under ``lookup``, each once, in a stable order.

    Every identifier the target path finds must resolve: a message silently delivered to
    fewer recipients than it names would be lost to the others.
    """
    found: list[Endpoint] = []
    path, values = _target_values(lookup, message)
    if path is not None:
        for value in values:
            try:
                key = parse_key(value, lookup.kind)
            except ValueError as exc:
                raise Unresolved(f"{path}: {exc}") from exc
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
        where = f"nothing at {' or '.join(lookup.targets)}" if lookup.targets else "no target"
        raise Unresolved(
            f"no recipient for interaction {lookup.interaction!r}: {where} "
            f"and no {transport} subscriber in the directory"
        )
    return list({endpoint.address: endpoint for endpoint in found}.values())


def _target_values(lookup: DirectoryLookup, message: FieldSource) -> tuple[str | None, list[str]]:
    """The first target path that has values, and its values (the last path when none has)."""
    targets = lookup.targets
    for path in targets:
        values = message.values(path)
        if values:
            return path, values
    return (targets[-1] if targets else None), []
