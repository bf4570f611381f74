"""Event fan-out (a recipient list from the directory): an immunisation reaches the patient's
GP practice and every subscriber, one delivery each, each retried on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tie_testing import (
    HttpReceiver,
    RunningEngine,
    as_sender,
    channel,
    engine_config,
    engine_over_http,
    wait_until,
)

from router.directory import Key, make_endpoint
from router.store.schema import deliveries, messages

INTERACTION = "immunisation-event"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def event(gp: str, status: str = "completed") -> dict[str, Any]:
    """A vaccination event: a collection of the Immunization and the Patient with their GP."""
    return {
        "resourceType": "Bundle",
        "id": f"event-{gp}-{status}",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:0f6c2c8e-6f42-4f6b-9d7f-5a1f3a0f9c01",
                "resource": {
                    "resourceType": "Immunization",
                    "status": status,
                    "vaccineCode": {
                        "coding": [
                            {"system": "http://snomed.info/sct", "code": "39114911000001105"}
                        ]
                    },
                    "patient": {"reference": "urn:uuid:0f6c2c8e-6f42-4f6b-9d7f-5a1f3a0f9c02"},
                    "occurrenceDateTime": "2024-01-05T10:00:00+00:00",
                },
            },
            {
                "fullUrl": "urn:uuid:0f6c2c8e-6f42-4f6b-9d7f-5a1f3a0f9c02",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}
                    ],
                    "generalPractitioner": [{"identifier": {"system": ODS, "value": gp}}],
                },
            },
        ],
    }


class Subscribers:
    def __init__(self) -> None:
        self.regional_calls = 0
        self.gp = HttpReceiver()
        self.other_gp = HttpReceiver()
        self.national = HttpReceiver()
        self.regional = HttpReceiver(self._regional)

    def _regional(self, _request: Any) -> int:
        self.regional_calls += 1
        return 503 if self.regional_calls == 1 else 201

    def stop(self) -> None:
        for server in (self.gp, self.other_gp, self.national, self.regional):
            server.stop()


@pytest.fixture
def subscribers() -> Iterator[Subscribers]:
    s = Subscribers()
    yield s
    s.stop()


@pytest.fixture
def tie(
    tmp_path: Path, store_url: str, subscribers: Subscribers
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    events = channel(
        {
            "name": "vaccinations",
            "source": {"http": {"events": [], "resources": ["Bundle"]}},
            "correlate": {"nhs_number": "Patient.identifier.value"},
            "destinations": {
                "subscribers": {
                    "when": [
                        {
                            "field": "Bundle.entry.resource.ofType(Immunization).status",
                            "equals": "completed",
                        }
                    ],
                    "directory": {
                        "interaction": INTERACTION,
                        "target": "Patient.generalPractitioner.identifier.value",
                        "kind": "ods",
                        "subscribers": True,
                    },
                    "http": {"path": "Bundle", "headers": {"X-Request-Id": "{message_uuid}"}},
                    "retry": {"max_attempts": 3, "backoff": ["50ms", "100ms"]},
                }
            },
        }
    )
    endpoints = [
        make_endpoint(Key("ods", ods), INTERACTION, "fhir", server.url + "/fhir", scope=scope)
        for ods, server, scope in (
            ("G82080", subscribers.gp, "addressed"),
            ("Y01234", subscribers.other_gp, "addressed"),
            ("X26", subscribers.national, "all"),
            ("Q71", subscribers.regional, "all"),
        )
    ]
    config = engine_config(tmp_path, store_url)
    with engine_over_http(config, {"vaccinations": events}, endpoints=endpoints) as tie:
        as_sender(tie[0].store, tie[1])
        yield tie


def _deliveries(running: RunningEngine) -> list[Any]:
    with running.store.read() as conn:
        return list(conn.execute(select(deliveries).order_by(deliveries.c.id)))


def _post(client: httpx.Client, document: dict[str, Any]) -> httpx.Response:
    return client.post(
        "/fhir/vaccinations/Bundle",
        content=json.dumps(document),
        headers={"Content-Type": "application/fhir+json"},
    )


def test_an_event_reaches_its_gp_and_every_subscriber(tie, subscribers):
    running, client = tie
    document = event("G82080")
    assert _post(client, document).status_code == 202

    def settled() -> list[Any]:
        rows = _deliveries(running)
        return rows if len(rows) == 3 and all(r.status == "sent" for r in rows) else []

    rows = wait_until(settled)
    assert {r.address: r.attempts for r in rows} == {
        subscribers.gp.url + "/fhir": 1,
        subscribers.national.url + "/fhir": 1,
        subscribers.regional.url + "/fhir": 2,  # its 503 was retried; nobody else was
    }
    for server in (subscribers.gp, subscribers.national):
        [received] = server.received
        assert received.path == "/fhir/Bundle"
        assert received.json() == document
    assert subscribers.regional_calls == 2
    assert subscribers.other_gp.received == []
    ids = {
        r.headers["x-request-id"]
        for s in (subscribers.gp, subscribers.national)
        for r in s.received
    }
    assert len(ids) == 1  # the same message, once to each


def test_events_that_do_not_match_or_name_an_unknown_gp(tie, subscribers):
    running, client = tie
    assert _post(client, event("G82080", status="not-done")).status_code == 202
    assert _post(client, event("Z99999")).status_code == 202

    def outcomes() -> list[Any]:
        with running.store.read() as conn:
            rows = conn.execute(
                select(messages.c.status, messages.c.error).order_by(messages.c.id)
            ).all()
        return rows if all(r.status not in ("received", "validating") for r in rows) else []

    filtered, unknown = wait_until(outcomes)
    assert filtered.status == "filtered"
    assert (unknown.status, "ods:Z99999" in unknown.error) == ("error", True)
    assert _deliveries(running) == []
    assert subscribers.national.received == []
