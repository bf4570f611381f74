"""The ServiceRequest registry's search, as FHIR R4 combines values: a repeated parameter
is "and", a comma "or", on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from router.fhir.bars import IndexedRequest
from router.fhir.outcome import Rejected
from router.fhir.registry import index, search
from router.fhir.search_params import MAX_VALUES, tokens
from router.store.inbound import utcnow
from router.store.schema import messages

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _request(rid: str, status: str, patient: str, *identifiers: tuple[str, str]) -> Any:
    resource = {"resourceType": "ServiceRequest", "id": rid, "status": status}
    return IndexedRequest(rid, status, patient, identifiers, resource)


REQUESTS = [
    _request("a", "active", "9000000009", ("urn:sys", "A"), ("urn:sys", "B")),
    _request("b", "active", "9000000017", ("urn:alt", "A")),  # not "a": another system
    _request("c", "completed", "9000000009", ("", "X,Y"), ("urn:other", "B")),
]


@pytest.fixture
def registry_store(store):
    with store.begin() as conn:
        message_id = conn.execute(
            messages.insert().values(
                uuid="m-1",
                channel="bars",
                received_at=utcnow(),
                status="processed",
                content_type="fhir+json",
                size=0,
                raw=b"",
            )
        ).inserted_primary_key[0]
        for item in REQUESTS:
            index(conn, "bars", message_id, [item], sender="s", receiver="r", now=utcnow())
    return store


def _found(store, **params: list[str]) -> list[str]:
    criteria = {
        {"patient_identifier": "patient"}.get(name, name): tokens(name, values)
        for name, values in params.items()
    }
    with store.read() as conn:
        rows, total = search(conn, "bars", **criteria)
    assert total == len(rows)
    return sorted(row["resource_id"] for row in rows)


# (parameters, the ids found); one store for all (a migrated store takes seconds).
CASES = [
    ({"status": ["active"]}, ["a", "b"]),
    ({"status": ["active,completed"]}, ["a", "b", "c"]),
    ({"status": ["active", "completed"]}, []),  # "and": none has both
    ({"status": ["active", "active,completed"]}, ["a", "b"]),
    ({"identifier": ["A"]}, ["a", "b"]),
    ({"identifier": ["A", "B"]}, ["a"]),  # both identifiers
    ({"identifier": ["urn:sys|A", "urn:sys|B"]}, ["a"]),
    ({"identifier": ["urn:sys|B,X\\,Y"]}, ["a", "c"]),  # \, a comma in the value
    ({"identifier": ["X,Y"]}, []),  # X or Y
    ({"identifier": ["|X\\,Y"]}, ["c"]),  # no system
    ({"patient_identifier": ["9000000009,9000000017"]}, ["a", "b", "c"]),
    ({"patient_identifier": ["9000000009", "9000000017"]}, []),
    ({"patient_identifier": [f"{NHS}|9000000009"], "status": ["active"]}, ["a"]),
    ({"patient_identifier": ["urn:other|9000000009"]}, []),
    ({"status": ["http://hl7.org/fhir/request-status|completed"]}, ["c"]),
    ({"status": ["urn:other|completed,active"]}, ["a", "b"]),
    ({"status": [""], "identifier": [","]}, ["a", "b", "c"]),  # empty values: ignored
    # system| is any code of the system
    ({"identifier": ["urn:sys|"]}, ["a"]),
    ({"identifier": ["urn:other|,urn:alt|"]}, ["b", "c"]),
    ({"identifier": ["urn:sys|", "urn:other|"]}, []),
    ({"patient_identifier": [f"{NHS}|"]}, ["a", "b", "c"]),
    ({"status": ["http://hl7.org/fhir/request-status|"]}, ["a", "b", "c"]),
]


def test_repeats_are_and_and_commas_or(registry_store):
    for params, found in CASES:
        assert _found(registry_store, **params) == found, params


def test_a_search_is_bounded_in_values():
    """Each value a query clause: thousands in one URL were thousands of subqueries."""
    assert len(tokens("identifier", ["A"] * MAX_VALUES)) == MAX_VALUES
    for values in (["A"] * (MAX_VALUES + 1), [",".join(["A"] * (MAX_VALUES + 1))]):
        with pytest.raises(Rejected) as refused:
            tokens("identifier", values)
        assert refused.value.status == 400
