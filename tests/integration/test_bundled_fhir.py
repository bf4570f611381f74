"""The bundled ``bars-referrals`` and ``booking-proxy`` channels with the bundled
``config/endpoints.yaml`` (its local test receivers moved to free ports): a referral and its
response travel between two real services, and a slot is booked at a real provider."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from tie_testing import (
    HttpReceiver,
    RunningEngine,
    api_token,
    as_sender,
    engine_config,
    engine_over_http,
    wait_until,
)

from router.config import load_channel

ROOT = Path(__file__).resolve().parents[2]
BUNDLED_PORTS = ("9101", "9102", "9103", "9104")
TOKEN = "tie_bundled-operator-token"


@pytest.fixture
def services() -> Iterator[dict[str, HttpReceiver]]:
    made = {
        "receiver": HttpReceiver(lambda r: (200, b"", {})),
        "sender": HttpReceiver(lambda r: (200, b"", {})),
        "provider": HttpReceiver(
            lambda r: (201, r.body, {"Content-Type": "application/fhir+json"})
        ),
        "consumer": HttpReceiver(),
    }
    yield made
    for server in made.values():
        server.stop()


@pytest.fixture
def tie(
    tmp_path: Path,
    store_url: str,
    services: dict[str, HttpReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    api_token(store_url, token=TOKEN)
    text = (ROOT / "config" / "endpoints.yaml").read_text()
    for bundled, server in zip(BUNDLED_PORTS, services.values(), strict=True):
        text = text.replace(f"127.0.0.1:{bundled}", f"127.0.0.1:{server.port}")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(text)
    channels = {
        name: load_channel(ROOT / "channels" / f"{name}.yaml")
        for name in ("bars-referrals", "booking-proxy")
    }
    config = engine_config(tmp_path, store_url, endpoints=str(endpoints))
    with engine_over_http(config, channels) as tie:
        # The bundled channels take senders' tokens only (auth: token, the default).
        as_sender(tie[0].store, tie[1])
        as_sender(tie[0].store, tie[1], proxy=True)
        yield tie


def test_a_referral_and_its_response_through_the_bundled_router(tie, services, bars_samples):
    _, client = tie
    fhir = {"Content-Type": "application/fhir+json"}
    request = bars_samples["servicerequest-request_validation"]
    response = bars_samples["servicerequest-response_validation"]
    sent = client.post(
        "/fhir/bars-referrals/$process-message", content=json.dumps(request), headers=fhir
    )
    assert sent.status_code == 200, sent.text
    back = client.post(
        "/fhir/bars-referrals/$process-message", content=json.dumps(response), headers=fhir
    )
    assert back.status_code == 200, back.text
    assert [r.json()["id"] for r in services["receiver"].received] == [request["id"]]
    assert [r.json()["id"] for r in services["sender"].received] == [response["id"]]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    conversation = wait_until(
        lambda: client.get(f"/api/conversations/{request['id']}", headers=auth).json()["messages"]
    )
    assert [m["control_id"] for m in conversation] == [request["id"], response["id"]]
    target = json.loads(
        base64.b64decode(services["sender"].received[0].headers["nhsd-target-identifier"])
    )
    assert target["value"] == "2222222222"


def test_a_slot_is_booked_through_the_bundled_proxy(tie, services):
    _, client = tie
    appointment = {"resourceType": "Appointment", "status": "booked"}
    provider = services["provider"]
    booked = client.post(
        f"/proxy/{provider.url}/STU3/Appointment",
        content=json.dumps(appointment),
        headers={
            "Ssp-TraceID": str(uuid4()),
            "Ssp-From": "200000000116",
            "Ssp-To": "200000000115",
            "Ssp-InteractionID": "urn:nhs:names:services:careconnect:fhir:rest:create:appointment",
            "Content-Type": "application/fhir+json",
        },
    )
    assert booked.status_code == 201
    assert booked.json() == appointment
    assert [r.path for r in provider.received] == ["/STU3/Appointment"]
