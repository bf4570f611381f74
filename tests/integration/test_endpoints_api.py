"""``/api/endpoints`` over a real socket, and an MLLP destination addressed by the directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hl7.client import MLLPClient
from tie_testing import (
    Hl7Receiver,
    RunningEngine,
    api_token,
    channel,
    engine_config,
    engine_over_http,
    hl7_message,
    serving,
    wait_until,
)

from router.store.schema import deliveries

TOKEN = "tie_directory-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def lab() -> Iterator[Hl7Receiver]:
    with serving(Hl7Receiver()) as receiver:
        yield receiver


@pytest.fixture
def second_lab() -> Iterator[Hl7Receiver]:
    with serving(Hl7Receiver()) as receiver:
        yield receiver


@pytest.fixture
def api(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, lab: Hl7Receiver
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    """The engine; receivers are fixtures set up before it, so they outlive its connections."""
    api_token(store_url, token=TOKEN)
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        yaml.safe_dump(
            {
                "endpoints": [
                    {
                        "ods": "699X0",
                        "mllp": f"127.0.0.1:{lab.port}",
                        "interactions": ["lab-order"],
                    }
                ]
            }
        )
    )
    orders = channel(
        {
            "name": "orders",
            "source": {"mllp": {"port": 0}},
            "destinations": {
                "lab": {
                    "directory": {"interaction": "lab-order", "target": "MSH-6.1", "kind": "ods"},
                    "mllp": {"ack_timeout": "5s"},
                    "retry": {"max_attempts": 2, "backoff": ["50ms", "100ms"]},
                }
            },
        }
    )
    config = engine_config(tmp_path, store_url, endpoints=str(endpoints))
    with engine_over_http(config, {"orders": orders}) as tie:
        yield tie


def _oml(sample: bytes, control_id: str, facility: str) -> bytes:
    message = hl7_message(sample, control_id)
    head, _, rest = message.partition(b"\r")
    fields = head.split(b"|")
    fields[5] = facility.encode()
    return b"|".join(fields) + b"\r" + rest


def _send(running: RunningEngine, raw: bytes) -> None:
    with MLLPClient("127.0.0.1", running.port("orders")) as client:
        client.send_message(raw)


def _address_of(running: RunningEngine, control_id: str) -> str | None:
    from sqlalchemy import select

    from router.store.schema import messages

    with running.store.read() as conn:
        return conn.scalar(
            select(deliveries.c.address)
            .join(messages, messages.c.id == deliveries.c.message_id)
            .where(messages.c.control_id == control_id, deliveries.c.status == "sent")
        )


def test_the_api_refuses_requests_without_the_token(api):
    _, client = api
    assert client.get("/api/endpoints").status_code == 401
    assert client.post("/api/endpoints", json={}).status_code == 401
    assert client.delete("/api/endpoints/1").status_code == 401


def test_seeded_entries_route_messages_and_api_changes_apply_at_once(
    lab, second_lab, api, hl7_samples
):
    running, client = api
    listed = client.get("/api/endpoints", headers=AUTH).json()["endpoints"]
    assert [(e["kind"], e["identifier"], e["transport"], e["origin"]) for e in listed] == [
        ("ods", "699X0", "mllp", "config")
    ]

    sample = hl7_samples["OML_O21_nhs_nwgmsa_v251"]
    _send(running, _oml(sample, "DIR-1", "699X0"))
    wait_until(lambda: _address_of(running, "DIR-1"))
    assert lab.control_ids() == ["DIR-1"]
    assert _address_of(running, "DIR-1") == f"127.0.0.1:{lab.port}"

    # A second laboratory appears through the API and gets the next order for it.
    second = second_lab
    created = client.post(
        "/api/endpoints",
        headers=AUTH,
        json={
            "key": "https://fhir.nhs.uk/Id/ods-organization-code|ryy",
            "interaction": "lab-order",
            "transport": "mllp",
            "address": f"127.0.0.1:{second.port}",
            "name": "Second lab",
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["identifier"], body["origin"], body["updated_by"]) == (
        "RYY",
        "operator",
        "operator",
    )
    _send(running, _oml(sample, "DIR-2", "RYY"))
    wait_until(lambda: second.received)
    assert second.control_ids() == ["DIR-2"]
    assert lab.control_ids() == ["DIR-1"]

    assert client.get(f"/api/endpoints/{body['id']}", headers=AUTH).json()["name"] == ("Second lab")
    assert client.delete(f"/api/endpoints/{body['id']}", headers=AUTH).status_code == 204
    assert client.delete(f"/api/endpoints/{body['id']}", headers=AUTH).status_code == 404
    assert client.get(f"/api/endpoints/{body['id']}", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"key": "RYE", "interaction": "x", "transport": "fhir", "address": "http://a"}, "kind"),
        (
            {"key": "ods:RYE", "interaction": "x", "transport": "fhir", "address": "a.example"},
            "base URL",
        ),
    ],
)
def test_bad_endpoints_are_refused_with_the_reason(api, body, problem):
    _, client = api
    response = client.post("/api/endpoints", headers=AUTH, json=body)
    assert response.status_code == 422
    assert problem in response.json()["detail"]
