"""BaRS routing between two real HTTP services through tie: the synchronous passthrough, the
response routed back to the original sender, one conversation, and the ServiceRequest
registry; failing receivers (down, slow, erroring) and unknown targets."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tie_testing import (
    HttpReceiver,
    Received,
    RunningEngine,
    api_token,
    as_sender,
    channel,
    engine_config,
    engine_over_http,
    free_ports,
    wait_until,
)

from router.directory import Key, make_endpoint
from router.fhir.exchange import FORWARD, open_exchange
from router.store.inbound import VALIDATING, Inbound, utcnow
from router.store.schema import attempts, correlations, deliveries, messages

TOKEN = "tie_bars-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FHIR = {"Content-Type": "application/fhir+json"}
RECEIVER = Key("dos", "111111111")
SENDER = Key("dos", "2222222222")
URN = "urn:hmpps:interventions-referral:5f1b3d44-3a43-4c5e-9a0c-2a9e8c1d7b21"
SR_ID = "236bb75d-90ef-461f-b71e-fde7f899802c"  # the request's ServiceRequest fullUrl uuid
MESSAGE_HEADER_ID = "5b0e2c1a-7d3f-4e8b-9c6a-1f2e3d4c5b6a"  # given to the request's header
MAX_BODY = 1024 * 1024  # of a request, and of the receiver's answer passed back


def target(key: Key) -> str:
    system = {"dos": "https://fhir.nhs.uk/Id/dos-service-id"}[key.kind]
    return base64.b64encode(
        json.dumps({"system": system, "value": key.identifier}).encode()
    ).decode()


class Services:
    """The receiving service (111111111) and the sending service (2222222222), both real."""

    def __init__(self, bars_samples: dict[str, Any]) -> None:
        self.answer_body = json.dumps(bars_samples["servicerequest-request_http-200-response"])
        self.booked_body = json.dumps(bars_samples["booking-request_http-200-response"])
        self.invalid_body = json.dumps(bars_samples["OperationOutcome_REC_400-invalid"])
        self.mode = "ok"
        self.receiver = HttpReceiver(self._receive)
        self.sender = HttpReceiver(lambda r: (200, b"", {}))

    async def _receive(self, request: Received) -> Any:
        if self.mode == "slow":
            await asyncio.sleep(2.0)
        if self.mode == "error":
            return 500, b'{"resourceType":"OperationOutcome","issue":[]}', {}
        if self.mode == "huge":
            return 200, b" " * (MAX_BODY + 1), {}
        fhir = {"Content-Type": "application/fhir+json"}
        if self.mode == "invalid":
            return 400, self.invalid_body.encode(), fhir
        if request.json()["entry"][0]["resource"]["eventCoding"]["code"] == "booking-request":
            return 200, self.booked_body.encode(), fhir
        return 200, self.answer_body.encode(), fhir

    def stop(self) -> None:
        self.receiver.stop()
        self.sender.stop()


@pytest.fixture
def services(bars_samples: dict[str, Any]) -> Iterator[Services]:
    s = Services(bars_samples)
    yield s
    s.stop()


@pytest.fixture
def tie(
    tmp_path: Path, store_url: str, services: Services, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    api_token(store_url, token=TOKEN)
    bars = channel(
        {
            "name": "bars",
            "source": {
                "http": {
                    "max_body": MAX_BODY,
                    "bars": {"timeout": "1s", "connect_timeout": "1s"},
                }
            },
        }
    )
    receiver, sender = services.receiver.url + "/fhir/R4", services.sender.url + "/fhir/R4"
    endpoints = [
        make_endpoint(RECEIVER, "servicerequest-request", "fhir", receiver),
        make_endpoint(RECEIVER, "booking-request", "fhir", receiver),
        make_endpoint(SENDER, "servicerequest-response", "fhir", sender),
    ]
    config = engine_config(tmp_path, store_url)
    with engine_over_http(config, {"bars": bars}, endpoints=endpoints) as tie:
        as_sender(tie[0].store, tie[1])
        yield tie


def _post(client: httpx.Client, document: Any, **headers: str) -> httpx.Response:
    return client.post(
        "/fhir/bars/$process-message", content=json.dumps(document), headers={**FHIR, **headers}
    )


def _request_with_urn(bars_samples: dict[str, Any]) -> dict[str, Any]:
    request = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    service_request = request["entry"][1]["resource"]
    service_request["identifier"] = [{"system": "https://hmpps.example/Id/referral", "value": URN}]
    return request


def _exchanges(running: RunningEngine) -> list[Any]:
    with running.store.read() as conn:
        return list(
            conn.execute(
                select(
                    messages.c.id,
                    messages.c.uuid,
                    messages.c.status,
                    messages.c.message_type,
                    messages.c.error,
                    deliveries.c.status.label("delivery"),
                    deliveries.c.destination,
                    deliveries.c.address,
                    deliveries.c.last_error,
                    deliveries.c.id.label("delivery_id"),
                )
                .outerjoin(deliveries, deliveries.c.message_id == messages.c.id)
                .order_by(messages.c.id)
            )
        )


def _settled(running: RunningEngine) -> list[Any]:
    rows = _exchanges(running)
    return rows if all(r.delivery in (None, "sent", "failed") for r in rows) else []


def test_a_referral_and_its_response_travel_as_one_conversation(tie, services, bars_samples):
    running, client = tie
    request = _request_with_urn(bars_samples)
    request["entry"][0]["resource"]["id"] = MESSAGE_HEADER_ID
    answer = _post(
        client,
        request,
        **{
            "NHSD-Target-Identifier": target(RECEIVER),
            "X-Request-Id": "60e6f8ce-2a4c-4f6e-a2f2-6e3f3d5c1a01",
            "X-Correlation-Id": "11c4a3b0-9d0e-4a61-8f6e-0b7d1d2f3e44",
        },
    )
    # The receiver's synchronous answer, passed through.
    assert answer.status_code == 200, answer.text
    assert answer.json() == bars_samples["servicerequest-request_http-200-response"]
    assert answer.headers["x-request-id"] == "60e6f8ce-2a4c-4f6e-a2f2-6e3f3d5c1a01"
    assert answer.headers["x-correlation-id"] == "11c4a3b0-9d0e-4a61-8f6e-0b7d1d2f3e44"
    [forwarded] = services.receiver.received
    assert forwarded.path == "/fhir/R4/$process-message"
    assert forwarded.json() == request
    assert forwarded.headers["x-request-id"] == "60e6f8ce-2a4c-4f6e-a2f2-6e3f3d5c1a01"
    assert forwarded.headers["nhsd-target-identifier"] == target(RECEIVER)
    assert "authorization" not in forwarded.headers  # the sender's tie token stays with tie

    # The receiver's business response goes back to the requester's source.endpoint.
    response = bars_samples["servicerequest-response_validation"]
    back = _post(client, response, **{"NHSD-Target-Identifier": target(SENDER)})
    assert back.status_code == 200, back.text
    [returned] = services.sender.received
    assert returned.json()["id"] == response["id"]
    assert returned.headers["nhsd-target-identifier"] == target(SENDER)

    rows = wait_until(lambda: _settled(running))
    assert [(r.message_type, r.status, r.delivery, r.destination) for r in rows] == [
        ("servicerequest-request", "processed", "sent", "forward"),
        ("servicerequest-response", "processed", "sent", "forward"),
    ]
    assert rows[0].address == services.receiver.url + "/fhir/R4/$process-message"
    assert rows[1].address == services.sender.url + "/fhir/R4/$process-message"
    with running.store.read() as conn:
        [attempt] = conn.execute(
            select(attempts).where(attempts.c.delivery_id == rows[0].delivery_id)
        ).all()
    assert attempt.response.startswith(b"HTTP/1.1 200 OK")
    assert attempt.response.endswith(services.answer_body.encode())

    # One conversation, whichever key is searched.
    for key in (URN, request["id"], response["id"], f"ServiceRequest/{SR_ID}"):
        found = client.get(f"/api/conversations/{key}", headers=AUTH).json()["messages"]
        assert [m["message_type"] for m in found] == [
            "servicerequest-request",
            "servicerequest-response",
        ], key
    detail = client.get(f"/api/messages/{rows[1].id}", headers=AUTH).json()
    assert [t["id"] for t in detail["timeline"]] == [rows[0].id, rows[1].id]
    keys = {(k["key"], k["value"]) for k in detail["correlations"]}
    assert ("response_to", request["id"]) in keys

    # FHIR R4 names the answered message by its MessageHeader.id (BaRS by its Bundle.id):
    # routed back all the same, with no target of its own, into the same conversation.
    by_header = copy.deepcopy(response)
    by_header["id"] = "0d5f8a0e-3a49-4f7e-9a52-6b1c2f0e9d11"
    header = by_header["entry"][0]["resource"]
    header["response"]["identifier"] = MESSAGE_HEADER_ID
    del header["destination"]
    again = _post(client, by_header)
    assert again.status_code == 200, again.text
    assert [r.json()["id"] for r in services.sender.received] == [response["id"], by_header["id"]]
    found = client.get(f"/api/conversations/{MESSAGE_HEADER_ID}", headers=AUTH).json()
    assert [m["control_id"] for m in found["messages"]] == [
        request["id"],
        response["id"],
        by_header["id"],
    ]


def test_the_registry_answers_searches_and_follows_versions(tie, bars_samples):
    running, client = tie
    request = _request_with_urn(bars_samples)
    assert _post(client, request).status_code == 200  # target from MessageHeader.destination
    assert _post(client, bars_samples["servicerequest-response_validation"]).status_code == 200

    def search(**params: str) -> dict[str, Any]:
        response = client.get("/fhir/bars/ServiceRequest", params=params, headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        return response.json()

    found = search(identifier=f"https://hmpps.example/Id/referral|{URN}")
    assert (found["resourceType"], found["type"], found["total"]) == ("Bundle", "searchset", 1)
    # The shape of the published search example (tests/data/bars).
    example = bars_samples["ServiceRequest_search_GET-success"]
    assert [link["relation"] for link in found["link"]] == [
        link["relation"] for link in example["link"]
    ]
    assert set(found["entry"][0]) == set(example["entry"][0])
    [entry] = found["entry"]
    assert entry["resource"]["id"] == SR_ID
    assert entry["resource"]["meta"]["versionId"] == "2"  # request, then response
    assert entry["search"] == {"mode": "match"}
    assert entry["fullUrl"].endswith(f"/fhir/bars/ServiceRequest/{SR_ID}")
    assert search(identifier=URN)["total"] == 1
    assert (
        search(**{"patient:identifier": "https://fhir.nhs.uk/Id/nhs-number|3478526985"})["total"]
        == 1
    )
    assert search(**{"patient:identifier": "3478526985"}, status="active")["total"] == 1
    assert search(status="revoked")["total"] == 0
    assert search(identifier="urn:other")["total"] == 0

    read = client.get(f"/fhir/bars/ServiceRequest/{SR_ID}", headers=AUTH)
    assert read.status_code == 200
    assert read.json()["status"] == "active"
    assert client.get("/fhir/bars/ServiceRequest/nope", headers=AUTH).status_code == 404
    assert httpx.get(client.base_url.join("/fhir/bars/ServiceRequest")).status_code == 401
    strict = {**AUTH, "Prefer": "handling=strict"}
    bad = client.get("/fhir/bars/ServiceRequest", params={"subject": "x"}, headers=strict)
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["diagnostics"] == "unknown search parameter 'subject'"

    # A cancellation: the same ServiceRequest, revoked, is linked to the conversation.
    cancel = copy.deepcopy(request)
    cancel["id"] = "4d5c6b7a-0000-4000-8000-00000000c0c0"
    cancel["entry"][0]["resource"]["reason"]["coding"][0]["code"] = "update"
    cancel["entry"][1]["resource"]["status"] = "revoked"
    assert _post(client, cancel).status_code == 200
    assert search(status="revoked")["entry"][0]["resource"]["meta"]["versionId"] == "3"
    assert search(status="active")["total"] == 0
    conversation = client.get(f"/api/conversations/{URN}", headers=AUTH).json()["messages"]
    assert len(conversation) == 3
    with running.store.read() as conn:
        cancels = conn.scalars(
            select(correlations.c.value).where(correlations.c.key == "cancels")
        ).all()
    assert cancels == [f"ServiceRequest/{SR_ID}"]


@pytest.mark.parametrize(
    "path", ["/fhir/bars/ServiceRequest", f"/fhir/bars/ServiceRequest/{SR_ID}"]
)
def test_the_registry_refuses_with_an_operation_outcome(tie, store_url, path):
    """A FHIR client gets its 401 and 403 as OperationOutcomes; the JSON API keeps its own."""
    _, client = tie
    sender = {"Authorization": client.headers.pop("Authorization")}  # who posts, reads nothing
    viewer = {"Authorization": f"Bearer {api_token(store_url, 'viewer', name='watcher')}"}
    for headers, status, code, http_code in (
        ({}, 401, "login", "UNAUTHORIZED"),
        ({"Authorization": "Bearer tie_wrong"}, 401, "login", "UNAUTHORIZED"),
        (viewer, 403, "forbidden", "FORBIDDEN"),
        (sender, 403, "forbidden", "FORBIDDEN"),
    ):
        answer = client.get(path, headers={**headers, "X-Request-Id": "r-1"})
        assert answer.status_code == status
        assert answer.headers["content-type"].startswith("application/fhir+json")
        assert answer.headers["x-request-id"] == "r-1"
        outcome = answer.json()
        assert outcome["resourceType"] == "OperationOutcome"
        [issue] = outcome["issue"]
        assert (issue["severity"], issue["code"]) == ("error", code)
        assert issue["details"]["coding"][0]["code"] == http_code
        if status == 401:
            assert answer.headers["www-authenticate"] == "Bearer"
    api = client.get("/api/messages", headers={"Authorization": "Bearer tie_wrong"})
    assert api.status_code == 401
    assert api.json() == {"detail": "invalid or expired token"}
    assert api.headers["www-authenticate"] == "Bearer"


def test_an_unknown_target_is_404_and_several_are_400_each_stored(tie, services, bars_samples):
    running, client = tie
    answer = _post(
        client,
        bars_samples["booking-request_process-message"],
        **{"NHSD-Target-Identifier": target(Key("dos", "999999999"))},
    )
    assert answer.status_code == 404
    [issue] = answer.json()["issue"]
    # As the published proxy 404 example has it.
    [example] = bars_samples["OperationOutcome_PROXY_404-not-found"]["issue"]
    assert (issue["severity"], issue["code"], issue["details"]) == (
        example["severity"],
        example["code"],
        example["details"],
    )
    assert "no FHIR endpoint for dos:999999999" in issue["diagnostics"]
    assert issue["expression"] == ["NHSD-Target-Identifier"]
    [row] = _exchanges(running)
    assert (row.status, row.delivery) == ("error", None)
    assert row.error.startswith("rejected (404): NHSD-Target-Identifier: no FHIR endpoint")
    # Support finds it by the Bundle.id the sender quotes, and by its event and sender.
    bundle_id = bars_samples["booking-request_process-message"]["id"]
    found = client.get(f"/api/messages?key={bundle_id}", headers=AUTH).json()["messages"]
    assert [m["id"] for m in found] == [row.id]
    assert (found[0]["message_type"], found[0]["sender"]) == (
        "booking-request",
        "http://fhir.nhs.uk/Id/dos-service-id|2222222222",
    )

    garbled = _post(
        client,
        bars_samples["booking-request_process-message"],
        **{"NHSD-Target-Identifier": "%%%not-base64"},
    )
    assert garbled.status_code == 400
    assert garbled.json()["issue"][0]["expression"] == ["NHSD-Target-Identifier"]

    # None at all: the diagnostic says what to send.
    nowhere = copy.deepcopy(bars_samples["booking-request_process-message"])
    del nowhere["entry"][0]["resource"]["destination"]
    unaddressed = _post(client, nowhere)
    assert unaddressed.status_code == 400
    assert unaddressed.json()["issue"][0]["diagnostics"] == (
        "no target: send NHSD-Target-Identifier or set MessageHeader.destination.endpoint "
        "(system|value)"
    )

    # Several destinations: forwarded to the first alone, it would be lost to the others.
    several = copy.deepcopy(bars_samples["booking-request_process-message"])
    header = several["entry"][0]["resource"]
    second = "https://fhir.nhs.uk/Id/dos-service-id|2222222222"
    header["destination"].append({**header["destination"][0], "endpoint": second})
    refused = _post(client, several)
    assert refused.status_code == 400, refused.text
    [issue] = refused.json()["issue"]
    assert (issue["code"], issue["expression"]) == (
        "not-supported",
        ["Bundle.entry[0].resource.destination"],
    )
    assert second in issue["diagnostics"]
    assert services.receiver.received == [] and services.sender.received == []
    assert _exchanges(running)[-1].error.startswith("rejected (400): Bundle.entry[0].resource.dest")


def _refused_by_its_models(bars_samples: dict[str, Any]) -> dict[str, Any]:
    document = _request_with_urn(bars_samples)
    document["entry"][1]["resource"].pop("intent")  # ServiceRequest.intent is required
    return document


def _registered(client: httpx.Client) -> int:
    params = {"identifier": URN}
    return client.get("/fhir/bars/ServiceRequest", params=params, headers=AUTH).json()["total"]


def test_a_message_its_models_refuse_is_kept_as_an_error_and_not_forwarded(
    tie, services, bars_samples
):
    running, client = tie
    answer = _post(client, _refused_by_its_models(bars_samples))
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.intent"]
    assert services.receiver.received == []  # forwarding waits for the models
    [row] = _exchanges(running)
    assert (row.status, row.delivery) == ("error", "cancelled")
    assert row.error.startswith("rejected (400): Bundle.entry[1].resource.intent")
    assert row.last_error.startswith("not forwarded: rejected (400)")
    assert _registered(client) == 0  # the registry keeps what passed validation

    # Refused by its models and sent to an unknown target: the models' refusal is answered.
    unknown = _post(
        client,
        _refused_by_its_models(bars_samples),
        **{"NHSD-Target-Identifier": target(Key("dos", "999999999"))},
    )
    assert unknown.status_code == 400
    refused = _exchanges(running)[1]
    assert (refused.status, refused.delivery) == ("error", None)
    assert refused.error.startswith("rejected (400): Bundle.entry[1].resource.intent")


@pytest.mark.parametrize(
    ("entry", "element", "value"),
    [(1, "identifier", 5), (5, "identifier", 5), (0, "source", ["x"])],
    ids=["ServiceRequest.identifier", "Patient.identifier", "MessageHeader.source"],
)
def test_elements_of_the_wrong_json_type_are_refused_by_the_models(
    tie, services, bars_samples, entry, element, value
):
    running, client = tie
    document = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    document["entry"][entry]["resource"][element] = value
    answer = _post(client, document)
    assert answer.status_code == 400, answer.text
    [issue, *_] = answer.json()["issue"]
    assert issue["expression"][0].startswith(f"Bundle.entry[{entry}].resource.{element}")
    assert services.receiver.received == []
    [row] = _exchanges(running)
    assert row.status == "error"
    assert row.error.startswith(f"rejected (400): Bundle.entry[{entry}].resource.{element}")


def _left_validating(running: RunningEngine, document: Any, lease: float = -240.0) -> str:
    """A BaRS exchange as a stop during validation leaves it: its message committed
    validating (with where it was going) a while ago, its delivery sending, its lease
    (``lease`` seconds from now) run out by default."""
    item = Inbound(
        "bars",
        json.dumps(document).encode(),
        content_type="fhir+json",
        source={
            "protocol": "http",
            "path": "/fhir/bars/$process-message",
            "bars": {"target": str(RECEIVER), "source_endpoint": None},
        },
        status=VALIDATING,
        received_at=utcnow() - timedelta(minutes=5),
    )
    with running.store.begin() as conn:
        open_exchange(
            conn,
            item,
            destination=FORWARD,
            address="http://receiver/$process-message",
            owner="gone",
            lease=lease,
            keys=[],
        )
    return item.uuid


def test_a_message_left_validating_is_released_with_its_service_requests(tie, bars_samples):
    running, client = tie
    valid = _left_validating(running, _request_with_urn(bars_samples))
    invalid = _left_validating(running, _refused_by_its_models(bars_samples))

    assert running.call(running.engine.gateway.recover_validating()) == 2

    with running.store.read() as conn:
        ids = dict(conn.execute(select(messages.c.uuid, messages.c.id)).all())
    rows = {r.id: r for r in _exchanges(running)}
    assert rows[ids[valid]].status == "processed"
    assert _registered(client) == 1
    refused = rows[ids[invalid]]
    assert (refused.status, refused.delivery) == ("error", "cancelled")
    assert refused.last_error.startswith("not forwarded: rejected (400)")


def test_an_exchange_in_flight_beyond_the_grace_is_left_to_its_lease(tie, bars_samples):
    """A channel whose timeout outlasts the recovery's grace: the exchange still forwarding
    holds its delivery's lease, so its message is not released until the lease runs out."""
    running, client = tie
    in_flight = _left_validating(running, _request_with_urn(bars_samples), lease=120.0)

    assert running.call(running.engine.gateway.recover_validating()) == 0
    with running.store.begin() as conn:
        conn.execute(deliveries.update().values(lease_until=utcnow() - timedelta(seconds=1)))
    assert running.call(running.engine.gateway.recover_validating()) == 1

    with running.store.read() as conn:
        status = conn.scalar(select(messages.c.status).where(messages.c.uuid == in_flight))
    assert status == "processed"
    assert _registered(client) == 1


@pytest.mark.parametrize(
    ("mode", "status", "text", "kept_error"),
    [
        ("slow", 504, "did not answer within 1s", "did not answer within 1s"),
        ("error", 502, "answered 500 Internal Server Error", "HTTP 500 Internal Server Error"),
        ("huge", 502, f"answer is larger than {MAX_BODY} bytes", "larger than"),
    ],
)
def test_a_failing_receiver_gets_502_or_504_and_the_exchange_is_kept(
    tie, services, bars_samples, mode, status, text, kept_error
):
    running, client = tie
    services.mode = mode
    answer = _post(client, bars_samples["booking-request_process-message"])
    assert answer.status_code == status
    assert text in answer.json()["issue"][0]["diagnostics"]
    [row] = wait_until(lambda: _settled(running))
    assert (row.status, row.delivery) == ("processed", "failed")
    assert kept_error in row.last_error
    assert len(services.receiver.received) == 1  # not retried: it may have been received


def test_a_booking_is_answered_and_its_response_refused_where_its_sender_has_no_endpoint(
    tie, bars_samples
):
    running, client = tie
    answer = _post(client, bars_samples["booking-request_process-message"])
    assert answer.status_code == 200
    assert answer.json() == bars_samples["booking-request_http-200-response"]
    [row] = wait_until(lambda: _settled(running))
    assert (row.message_type, row.delivery) == ("booking-request", "sent")

    # Its response goes back to the booking's sender, which has no booking-response
    # endpoint: the 404 says the target came from the message it answers.
    response = copy.deepcopy(bars_samples["servicerequest-response_validation"])
    header = response["entry"][0]["resource"]
    header["eventCoding"]["code"] = "booking-response"
    header["response"]["identifier"] = bars_samples["booking-request_process-message"]["id"]
    refused = _post(client, response)
    assert refused.status_code == 404, refused.text
    [issue] = refused.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[0].resource.response.identifier"]
    assert f"{SENDER} (the source.endpoint of the message it answers)" in issue["diagnostics"]


def test_a_receivers_client_error_passes_through_unchanged(tie, services, bars_samples):
    running, client = tie
    services.mode = "invalid"
    answer = _post(client, bars_samples["booking-request_process-message"])
    assert answer.status_code == 400
    assert answer.json() == bars_samples["OperationOutcome_REC_400-invalid"]
    [row] = wait_until(lambda: _settled(running))
    assert (row.delivery, row.last_error) == ("failed", "HTTP 400 Bad Request")


def test_a_receiver_that_is_down_gets_502_and_one_warning(tie, services, bars_samples, caplog):
    running, client = tie
    (port,) = free_ports(1)
    running.register(
        [make_endpoint(RECEIVER, "booking-request", "fhir", f"http://127.0.0.1:{port}/fhir")]
    )
    request = bars_samples["booking-request_process-message"]
    with caplog.at_level(logging.WARNING, logger="router.fhir.routing"):
        answer = _post(client, request)
        again = _post(client, request)
    assert (answer.status_code, again.status_code) == (502, 502)
    assert "could not be reached: ConnectError" in answer.json()["issue"][0]["diagnostics"]
    rows = wait_until(lambda: len(_settled(running)) == 2 and _settled(running))
    assert {(row.status, row.delivery) for row in rows} == {("processed", "failed")}
    # One line, not one a request: the second failure is counted within the window.
    [line] = [r for r in caplog.records if r.name == "router.fhir.routing"]
    text = line.getMessage()
    assert line.levelname == "WARNING"
    assert text.startswith(f"bars/forward: message {rows[0].uuid} not delivered to ")
    assert f"http://127.0.0.1:{port}, the sender was answered 502" in text
    assert f"cannot connect to 127.0.0.1:{port}" in text
    assert request["id"] not in text and "$process-message" not in text  # no content


def test_a_client_hammering_with_a_bad_token_is_one_warning_per_host_without_the_token(
    tie, bars_samples, caplog
):
    """Refused, and not silent (an operator or a SIEM sees the attempt), but one line for a
    client's host every few minutes, not one a request."""
    _, client = tie
    bad = "tie_NotALiveToken0123456789"
    request = bars_samples["servicerequest-request_validation"]
    with caplog.at_level(logging.INFO):
        for _ in range(30):
            assert _post(client, request, Authorization=f"Bearer {bad}").status_code == 401
            answer = client.get("/api/messages", headers={"Authorization": f"Bearer {bad}"})
            assert answer.status_code == 401
    refusals = [
        (r.name, r.levelname, r.getMessage())
        for r in caplog.records
        if r.name in ("router.fhir.senders", "router.api.security")
    ]
    assert [(name, level, line.split(" from ")[0]) for name, level, line in refusals] == [
        ("router.fhir.senders", "WARNING", "channel bars: refused a request"),
        ("router.api.security", "WARNING", "refused a request"),
    ]
    assert all("127.0.0.1" in line for _, _, line in refusals)
    assert bad not in caplog.text
