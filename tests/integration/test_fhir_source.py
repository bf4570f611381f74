"""FHIR sources over a real socket: ``$process-message`` and RESTful create, checked, stored
before the 2xx, routed by FHIR paths to a real uvicorn receiver; and every refusal answered
with an OperationOutcome and stored with its reason."""

from __future__ import annotations

import copy
import gzip
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import select
from tie_testing import (
    HttpReceiver,
    RunningEngine,
    announced_post,
    api_token,
    as_sender,
    channel,
    engine_config,
    engine_over_http,
    serving,
    wait_until,
)

from router.auth.tokens import list_tokens, revoke_token
from router.auth.users import disable_user
from router.fhir import registry
from router.fhir.bars import IndexedRequest, service_requests
from router.fhir.outcome import HTTP_ERROR_CODES
from router.store.inbound import utcnow
from router.store.schema import audit_events, correlations, messages

FHIR_TYPE = "application/fhir+json"
FHIR = {"Content-Type": FHIR_TYPE}
REQUESTS = ("servicerequest-request_validation", "booking-request_process-message")


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    answer = (200, b"{}", {"Content-Type": "application/fhir+json"})
    with serving(HttpReceiver(lambda r: answer)) as rx:
        yield rx


def _channels(receiver: HttpReceiver) -> dict[str, Any]:
    inbox = channel(
        {
            "name": "inbox",
            "source": {"http": {"max_body": "64KB"}},
            "idempotent": {"window": "1h"},
            "correlate": {"bundle": "Bundle.id"},
            "destinations": {
                "rx": {
                    "when": [
                        {
                            "field": "MessageHeader.eventCoding.code",
                            "in": ["servicerequest-request", "booking-request"],
                        }
                    ],
                    "http": {
                        "url": receiver.url + "/fhir/R4",
                        "path": "$process-message",
                        "headers": {"X-Request-Id": "{message_uuid}"},
                    },
                    # HTTP destinations are unordered by default: two deliveries may be
                    # sent side by side and arrive either way round. Ordered, they arrive
                    # in receive order, one at a time.
                    "ordered": True,
                }
            },
        }
    )
    events = channel(
        {
            "name": "events",
            "source": {"http": {"events": [], "resources": ["Immunization"]}},
            "destinations": {"rx": {"http": {"url": receiver.url, "path": "Immunization"}}},
        }
    )
    named = channel(
        {"name": "named", "source": {"http": {"senders": ["gp-a"]}}, "destinations": {}}
    )
    anyone = channel({"name": "anyone", "source": {"http": {"auth": "none"}}, "destinations": {}})
    return {"inbox": inbox, "events": events, "named": named, "anyone": anyone}


@pytest.fixture
def engine(
    tmp_path: Path, store_url: str, receiver: HttpReceiver
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    with engine_over_http(engine_config(tmp_path, store_url), _channels(receiver)) as tie:
        as_sender(tie[0].store, tie[1])
        yield tie


def _rows(running: RunningEngine, *where: Any) -> list[Any]:
    with running.store.read() as conn:
        return list(conn.execute(select(messages).where(*where).order_by(messages.c.id)))


def _post(client: httpx.Client, path: str, document: Any, **headers: str) -> httpx.Response:
    return client.post(path, content=json.dumps(document), headers={**FHIR, **headers})


def test_messages_are_stored_before_the_answer_and_routed_by_their_event(
    engine, receiver, bars_samples
):
    running, client = engine
    for name in (*REQUESTS, "servicerequest-response_validation"):
        document = bars_samples[name]
        response = _post(
            client,
            "/fhir/inbox/$process-message",
            document,
            **{"X-Request-Id": f"req-{name}", "X-Correlation-Id": "corr-1"},
        )
        assert response.status_code == 202, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        assert response.headers["x-request-id"] == f"req-{name}"
        assert response.headers["x-correlation-id"] == "corr-1"
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        uuid = outcome["issue"][0]["diagnostics"].removeprefix("accepted as urn:tie:message:")
        [row] = _rows(running, messages.c.uuid == uuid)  # committed before the 202
        assert row.raw == json.dumps(document).encode()
        assert (row.content_type, row.control_id) == ("fhir+json", document["id"])
        assert json.loads(row.source)["headers"]["x-request-id"] == f"req-{name}"

    wait_until(lambda: len(receiver.received) == 2)
    assert [r.json()["id"] for r in receiver.received] == [bars_samples[n]["id"] for n in REQUESTS]
    assert {r.path for r in receiver.received} == {"/fhir/R4/$process-message"}
    assert {r.headers["content-type"] for r in receiver.received} == {"application/fhir+json"}
    wait_until(lambda: [r.status for r in _rows(running)] == ["processed", "processed", "filtered"])
    rows = _rows(running)
    assert [r.message_type for r in rows] == [
        "servicerequest-request",
        "booking-request",
        "servicerequest-response",
    ]
    assert rows[2].error == "no destination's 'when' matched"
    with running.store.read() as conn:
        keys = set(conn.execute(select(correlations.c.key, correlations.c.value)))
    assert ("bundle", bars_samples["booking-request_process-message"]["id"]) in keys


def test_a_resent_bundle_is_recognised_and_not_routed_again(engine, receiver, bars_samples):
    running, client = engine
    document = bars_samples["booking-request_process-message"]
    first = _post(client, "/fhir/inbox/$process-message", document)
    again = _post(client, "/fhir/inbox/$process-message", document)
    assert (first.status_code, again.status_code) == (202, 200)
    original = first.json()["issue"][0]["diagnostics"].removeprefix("accepted as ")
    assert original in again.json()["issue"][0]["diagnostics"]
    wait_until(lambda: receiver.received)
    wait_until(lambda: all(r.status not in ("received", "validating") for r in _rows(running)))
    assert len(receiver.received) == 1
    assert [r.status for r in _rows(running)] == ["processed", "filtered"]
    # Its reason names the Bundle.id and the sender as the MessageHeader gives them.
    source = document["entry"][0]["resource"]["source"]["endpoint"]
    assert _rows(running)[1].error == (
        f"duplicate of {original.removeprefix('urn:tie:message:')}: "
        f"Bundle.id {document['id']!r} from {source} already received"
    )


def test_a_restful_create_is_routed_like_a_message(engine, receiver):
    running, client = engine
    immunization = {
        "resourceType": "Immunization",
        "id": "imm-1",
        "status": "completed",
        "vaccineCode": {
            "coding": [{"system": "http://snomed.info/sct", "code": "39114911000001105"}]
        },
        "patient": {
            "identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}
        },
        "occurrenceDateTime": "2024-01-05T10:00:00+00:00",
    }
    response = _post(client, "/fhir/events/Immunization", immunization)
    assert response.status_code == 202, response.text
    wait_until(lambda: receiver.received)
    assert receiver.received[0].path == "/Immunization"
    assert receiver.received[0].json() == immunization
    [row] = _rows(running)
    assert (row.message_type, row.control_id) == ("Immunization", "imm-1")


def _refused(running: RunningEngine) -> list[Any]:
    return _rows(running, messages.c.status == "error")


def _mutate(bars_samples: dict[str, Any], change: Any) -> Any:
    document = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    change(document)
    return document


@pytest.mark.parametrize(
    ("case", "code", "expression", "text"),
    [
        (
            "bad json",
            "structure",
            None,
            "invalid JSON: Expecting property name enclosed in double quotes at line 1 column 2",
        ),
        (
            "duplicate key",
            "structure",
            "Bundle.entry[1].resource.status",
            "duplicate key 'status' in the object at Bundle.entry[1].resource",
        ),
        ("wrong resourceType", "invalid", "resourceType", "expected a Bundle, got a Patient"),
        ("not a message", "invalid", "Bundle.type", "not a message (type is 'document')"),
        (
            "missing MessageHeader",
            "invalid",
            "Bundle.entry[0].resource",
            "must be a MessageHeader (found ServiceRequest)",
        ),
        (
            "unknown event",
            "code-invalid",
            "Bundle.entry[0].resource.eventCoding",
            "unknown event",
        ),
        (
            "invalid model",
            "required",
            "Bundle.entry[1].resource.intent",
            "Value for the field 'intent' is required",
        ),
    ],
)
def test_bad_requests_get_400_with_the_problem_and_where(
    engine, bars_samples, case, code, expression, text
):
    running, client = engine
    bodies = {
        "bad json": b"{,}",
        # Read last-one-wins, tie saw it active; a receiver keeping the first, revoked.
        "duplicate key": json.dumps(bars_samples["servicerequest-request_validation"])
        .replace('"ServiceRequest", ', '"ServiceRequest", "status": "revoked", ')
        .encode(),
        "wrong resourceType": json.dumps({"resourceType": "Patient"}).encode(),
        "not a message": json.dumps(
            _mutate(bars_samples, lambda d: d.update(type="document"))
        ).encode(),
        "missing MessageHeader": json.dumps(
            _mutate(bars_samples, lambda d: d.update(entry=d["entry"][1:]))
        ).encode(),
        "unknown event": json.dumps(
            _mutate(
                bars_samples,
                lambda d: d["entry"][0]["resource"]["eventCoding"].update(code="nonsense"),
            )
        ).encode(),
        "invalid model": json.dumps(
            _mutate(bars_samples, lambda d: d["entry"][1]["resource"].pop("intent"))
        ).encode(),
    }
    response = client.post("/fhir/inbox/$process-message", content=bodies[case], headers=FHIR)
    assert response.status_code == 400
    [issue, *_] = response.json()["issue"]
    assert issue["code"] == code
    assert text in issue["diagnostics"]
    assert issue.get("expression") == ([expression] if expression else None)
    [stored] = _refused(running)
    assert stored.raw == bodies[case]
    assert stored.error.startswith("rejected (400): ")
    assert text in stored.error
    if expression:
        assert expression in stored.error
    # Found by the Bundle.id the sender knows, once the body could be read for it.
    sent = json.loads(bodies[case]) if case not in ("bad json", "duplicate key") else {}
    assert stored.control_id == sent.get("id")


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 20_000 + b"]" * 20_000,
        b'{"resourceType": "Bundle", "type": "message", "total": ' + b"9" * 5000 + b"}",
    ],
    ids=["nested too deeply", "an integer too long"],
)
def test_json_python_will_not_hold_is_refused_and_the_workers_live_on(engine, body):
    running, client = engine
    workers = running.engine.gateway.validators.pids
    response = client.post("/fhir/inbox/$process-message", content=body, headers=FHIR)
    assert response.status_code == 400, response.text
    [issue] = response.json()["issue"]
    assert issue["code"] == "structure"
    assert issue["diagnostics"].startswith("invalid JSON: ")
    [stored] = _refused(running)
    assert stored.error.startswith("rejected (400): invalid JSON: ")
    assert running.engine.gateway.validators.pids == workers


def test_an_oversized_body_is_refused_without_reading_it_all(engine):
    running, client = engine
    body = b'{"resourceType": "Bundle", "padding": "' + b"x" * 200_000 + b'"}'
    response = client.post("/fhir/inbox/$process-message", content=body, headers=FHIR)
    assert response.status_code == 413
    assert "larger than 64000 bytes" in response.json()["issue"][0]["diagnostics"]
    [stored] = _refused(running)
    assert "rejected (413)" in stored.error
    assert len(stored.raw) <= 64 * 1024

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"x" * 10_000

    streamed = client.post("/fhir/inbox/$process-message", content=chunks(), headers=FHIR)
    assert streamed.status_code == 413


def test_other_content_types_get_415(engine, bars_samples):
    running, client = engine
    body = json.dumps(bars_samples["booking-request_process-message"])
    other_types = (
        "text/plain",
        "application/xml",
        "application/fhir+xml",
        "application/fhir+xml; fhirVersion=4.0",
        # FHIR JSON is UTF-8: a body labelled Latin-1 would be read as another text.
        "application/fhir+json; charset=iso-8859-1",
        None,
    )
    for content_type in other_types:
        headers = {"Content-Type": content_type} if content_type else {}
        response = client.post("/fhir/inbox/$process-message", content=body, headers=headers)
        assert response.status_code == 415, content_type
        assert response.json()["issue"][0]["code"] == "not-supported"
    # FHIR JSON of another version than the channel's (R4) would be misread by its models.
    for stu3 in ("application/fhir+json; fhirVersion=3.0", 'application/json;fhirVersion="3.0"'):
        response = client.post(
            "/fhir/inbox/$process-message", content=body, headers={"Content-Type": stu3}
        )
        assert response.status_code == 415, stu3
        issue = response.json()["issue"][0]
        assert issue["code"] == "not-supported"
        assert "fhirVersion=4.0" in issue["diagnostics"]
    # A compressed body: tie does not decode it (it read as JSON that is not UTF-8, 400).
    compressed = client.post(
        "/fhir/inbox/$process-message",
        content=gzip.compress(body.encode()),
        headers={**FHIR, "Content-Encoding": "gzip"},
    )
    assert compressed.status_code == 415
    assert compressed.headers["accept-encoding"] == "identity"
    assert "content encoding 'gzip'" in compressed.json()["issue"][0]["diagnostics"]
    plain_json = client.post(
        "/fhir/inbox/$process-message",
        content=body,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert plain_json.status_code == 202
    resent = json.dumps({**json.loads(body), "id": str(uuid4())})
    r4 = "application/fhir+json; fhirVersion=4.0.1"
    named = client.post(
        "/fhir/inbox/$process-message", content=resent, headers={"Content-Type": r4}
    )
    assert named.status_code == 202
    refused = _refused(running)
    assert len(refused) == len(other_types) + 3
    assert refused[-1].error.startswith("rejected (415): content encoding 'gzip'")


def test_a_client_that_asks_for_xml_gets_406_and_json_clients_are_answered(engine, bars_samples):
    running, client = engine
    document = bars_samples["booking-request_process-message"]
    for accept in ("application/fhir+xml", "application/xml;q=1, application/json;q=0"):
        refused = _post(client, "/fhir/inbox/$process-message", document, Accept=accept)
        assert refused.status_code == 406, accept
        assert refused.headers["content-type"].startswith("application/fhir+json")
        assert refused.json()["issue"][0]["code"] == "not-supported"
    by_format = _post(client, "/fhir/inbox/$process-message?_format=xml", document)
    assert by_format.status_code == 406
    assert by_format.json()["issue"][0]["expression"] == ["_format"]
    refusals = _refused(running)
    assert len(refusals) == 3
    assert refusals[0].error.startswith("rejected (406): Accept 'application/fhir+xml'")
    assert refusals[0].raw == json.dumps(document).encode()

    for accept in ("*/*", "application/json", "application/fhir+json;fhirVersion=4.0"):
        resent = {**document, "id": str(uuid4())}
        taken = _post(client, "/fhir/inbox/$process-message", resent, Accept=accept)
        assert taken.status_code == 202, accept
    resent = {**document, "id": str(uuid4())}
    formatted = _post(
        client, "/fhir/inbox/$process-message?_format=application/fhir%2Bjson", resent
    )
    assert formatted.status_code == 202
    overridden = {**document, "id": str(uuid4())}
    path = "/fhir/inbox/$process-message?_format=json"  # _format overrides Accept
    assert _post(client, path, overridden, Accept="application/fhir+xml").status_code == 202


def test_unknown_channels_and_resource_types_are_not_found(engine):
    running, client = engine
    body = json.dumps({"resourceType": "Patient"})
    for path in (
        "/fhir/nowhere/$process-message",
        "/fhir/events/Patient",
        "/fhir/events/$process-message",
    ):
        response = client.post(path, content=body, headers=FHIR)
        assert response.status_code == 404, path
        assert response.json()["issue"][0]["code"] == "not-found"
    # Refused by a channel that exists: stored with the reason (no channel, nowhere to keep).
    assert [(r.channel, r.raw, r.error) for r in _refused(running)] == [
        ("events", body.encode(), "rejected (404): channel events takes no Patient"),
        ("events", body.encode(), "rejected (404): channel events takes no messages"),
    ]
    mismatch = client.post("/fhir/events/Immunization", content=body, headers=FHIR)
    assert mismatch.status_code == 400
    assert mismatch.json()["issue"][0]["expression"] == ["resourceType"]


def test_other_methods_on_the_post_endpoints_get_405_with_an_operation_outcome(engine):
    running, client = engine
    ids = {"X-Request-Id": "req-1", "X-Correlation-Id": "corr-1"}
    for method, path, allowed in (
        ("GET", "/fhir/inbox/$process-message", "POST"),
        ("PUT", "/fhir/inbox/$process-message", "POST"),
        ("DELETE", "/fhir/inbox/$process-message", "POST"),
        ("PUT", "/fhir/events/Immunization", "POST"),
        ("DELETE", "/fhir/inbox/ServiceRequest", "GET, POST"),
    ):
        response = client.request(method, path, headers=ids)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed
        assert response.headers["content-type"] == "application/fhir+json"
        assert response.headers["x-request-id"] == "req-1"
        assert response.headers["x-correlation-id"] == "corr-1"
        [issue] = response.json()["issue"]
        assert issue["code"] == "not-supported"
        assert issue["details"]["coding"][0]["code"] == "METHOD_NOT_ALLOWED"
        assert method in issue["diagnostics"]
    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}
    assert client.get("/fhir/inbox/ServiceRequest", headers=auth).status_code == 200
    # A channel that does not exist is not found, whatever the method.
    for method, path in (
        ("GET", "/fhir/nowhere/Patient"),
        ("PUT", "/fhir/nowhere/$process-message"),
    ):
        response = client.request(method, path, headers=ids)
        assert response.status_code == 404, (method, path)
        assert "allow" not in response.headers
        assert response.headers["x-request-id"] == "req-1"
        [issue] = response.json()["issue"]
        assert (issue["code"], issue["diagnostics"]) == (
            "not-found",
            "no FHIR channel named 'nowhere'",
        )
    assert _refused(running) == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/fhir", None, 404, "not-found"),
        ("GET", "/fhir/", None, 404, "not-found"),
        ("GET", "/fhir/nowhere", None, 404, "not-found"),
        ("POST", "/fhir/inbox/$process-message/more", b"{}", 404, "not-found"),
        ("GET", "/fhir/inbox/ServiceRequest/sr-1/_history", None, 404, "not-found"),
        ("GET", "/proxy", None, 404, "not-found"),
        ("PUT", "/fhir/inbox/ServiceRequest/sr-1", b"{}", 405, "not-supported"),
        ("GET", "/fhir/inbox/ServiceRequest", b"x" * (3 * 1024 * 1024), 413, "too-costly"),
    ],
)
def test_the_frameworks_own_errors_under_fhir_are_operation_outcomes(
    engine, method, path, body, status, code
):
    """A path, method or body no tie code answers under /fhir or /proxy is refused by
    FastAPI or the API's body limit: still an OperationOutcome, never {"detail": ...}."""
    _, client = engine
    ids = {**FHIR, "X-Request-Id": "req-1"}
    response = client.request(method, path, content=body, headers=ids)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/fhir+json"
    assert response.headers["x-request-id"] == "req-1"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("error", code)
    assert issue["details"]["coding"][0]["system"] == HTTP_ERROR_CODES
    if status == 405:
        assert response.headers["allow"] == "GET"
    api = client.get("/api/nothing")
    assert (api.status_code, api.json()) == (404, {"detail": "Not Found"})


def test_every_refusal_of_a_post_is_an_operation_outcome(engine, bars_samples):
    """The refusals a FHIR sender meets most: malformed JSON, a wrong content type, a
    wrong method, an unknown channel, an oversize body; each with its issue type."""
    running, client = engine
    document = json.dumps(bars_samples["booking-request_process-message"])
    for method, path, body, content_type, status, code in (
        ("POST", "/fhir/inbox/$process-message", b'{"resourceType": ', FHIR_TYPE, 400, "structure"),
        ("POST", "/fhir/inbox/$process-message", document, "text/plain", 415, "not-supported"),
        ("PATCH", "/fhir/inbox/$process-message", document, FHIR_TYPE, 405, "not-supported"),
        ("POST", "/fhir/nowhere/$process-message", document, FHIR_TYPE, 404, "not-found"),
        ("POST", "/fhir/inbox/$process-message", b"[" * 70_000, FHIR_TYPE, 413, "too-costly"),
    ):
        headers = {"Content-Type": content_type}
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code == status, (method, path, status)
        assert response.headers["content-type"] == "application/fhir+json"
        [issue] = response.json()["issue"]
        assert issue["code"] == code, (method, path, status)
    # A lone surrogate is JSON, but no text a database keeps: refused and stored all the same.
    bundle_id = bars_samples["booking-request_process-message"]["id"]
    surrogate = document.replace(f'"{bundle_id}"', '"\\ud800"', 1).encode()
    refused = client.post("/fhir/inbox/$process-message", content=surrogate, headers=FHIR)
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == ["Bundle.id"]
    [row] = _rows(running, messages.c.raw == surrogate)
    assert (row.status, row.control_id) == ("error", None)


def test_a_body_with_a_byte_order_mark_or_not_in_utf_8_is_refused_naming_why(engine, bars_samples):
    """RFC 8259 §8.1: a sender must not add a BOM, a parser may ignore one. tie refuses it
    (and UTF-16 or UTF-32, which Python's parser would read): it forwards the body as
    received, and a receiver whose parser treats the BOM as an error would refuse a message
    tie had already acknowledged."""
    running, client = engine
    document = json.dumps(bars_samples["booking-request_process-message"])
    for body, diagnostics in (
        (b"\xef\xbb\xbf" + document.encode(), "the body begins with a UTF-8 byte order mark"),
        (document.encode("utf-16"), "the body is not UTF-8"),
        (document.encode("utf-32"), "the body is not UTF-8"),
    ):
        refused = client.post("/fhir/inbox/$process-message", content=body, headers=FHIR)
        assert refused.status_code == 400, refused.text
        [issue] = refused.json()["issue"]
        assert issue["code"] == "structure"
        assert issue["diagnostics"].startswith(diagnostics), issue["diagnostics"]
        [row] = _rows(running, messages.c.raw == body)
        assert row.status == "error"
    accepted = client.post("/fhir/inbox/$process-message", content=document, headers=FHIR)
    assert accepted.status_code == 202, accepted.text


def test_a_source_takes_only_a_senders_token_and_keeps_every_refusal(engine, bars_samples):
    """auth: token (the default): no token or a dead one is 401 with WWW-Authenticate, a
    user who is not a sender 403; each refusal is stored with its reason, and an accepted
    message names the user who sent it."""
    running, client = engine
    sender = client.headers.pop("Authorization")  # the fixture's sender, for the last post
    document = bars_samples["servicerequest-request_validation"]
    viewer = f"Bearer {api_token(running.store, 'viewer', name='watcher')}"
    admin = f"Bearer {api_token(running.store, 'admin', name='root')}"
    for authorization, status, code, why in (
        (None, 401, "login", "takes requests from senders only: send Authorization: Bearer"),
        ("Basic Z3A6c2VjcmV0", 401, "login", "takes requests from senders only"),
        ("Bearer tie_not-a-token", 401, "login", "token is invalid, revoked or expired"),
        (viewer, 403, "forbidden", "user watcher does not hold the sender role"),
        (admin, 202, "informational", "accepted as urn:tie:message:"),
        (sender, 202, "informational", "accepted as urn:tie:message:"),
    ):
        extra = {"Authorization": authorization} if authorization else {}
        sent = document if status != 202 else {**document, "id": str(uuid4())}
        answer = _post(client, "/fhir/inbox/$process-message", sent, **extra)
        assert answer.status_code == status, (authorization, answer.text)
        assert answer.headers["content-type"] == "application/fhir+json"
        [issue] = answer.json()["issue"]
        assert issue["code"] == code
        assert why in issue["diagnostics"]
        if status == 401:
            assert answer.headers["www-authenticate"] == "Bearer"
            assert issue["details"]["coding"][0]["code"] == "UNAUTHORIZED"
    refused = _refused(running)
    assert [r.error.split(":")[0] for r in refused] == ["rejected (401)"] * 3 + ["rejected (403)"]
    assert {r.raw for r in refused} == {json.dumps(document).encode()}
    assert "authorization" not in json.loads(refused[0].source)["headers"]
    accepted = _rows(running, messages.c.status != "error")
    assert [json.loads(r.source)["user"] for r in accepted] == ["root", "sender"]


def test_a_source_that_names_its_senders_takes_no_other(engine, bars_samples):
    running, client = engine
    document = bars_samples["servicerequest-request_validation"]
    other = {"Authorization": f"Bearer {api_token(running.store, 'sender', name='gp-b')}"}
    named = {"Authorization": f"Bearer {api_token(running.store, 'sender', name='GP-A')}"}
    refused = _post(client, "/fhir/named/$process-message", document, **other)
    assert refused.status_code == 403
    [issue] = refused.json()["issue"]
    assert (issue["code"], issue["diagnostics"]) == (
        "forbidden",
        "user gp-b is not a sender of channel named",
    )
    # The fixture's sender is no sender of this channel either; GP-A is gp-a (names ignore case).
    assert _post(client, "/fhir/named/$process-message", document).status_code == 403
    assert _post(client, "/fhir/named/$process-message", document, **named).status_code == 202
    anonymous = httpx.post(
        client.base_url.join("/fhir/anyone/$process-message"),
        content=json.dumps(document),
        headers=FHIR,
    )
    assert anonymous.status_code == 202  # auth: none takes anyone
    assert [r.channel for r in _refused(running)] == ["named", "named"]


def test_a_revoked_token_or_a_disabled_sender_is_refused_at_once(engine, bars_samples):
    running, client = engine
    document = bars_samples["servicerequest-request_validation"]
    assert _post(client, "/fhir/inbox/$process-message", document).status_code == 202
    with running.store.begin() as conn:
        disable_user(conn, "sender", actor="test")
    disabled = _post(client, "/fhir/inbox/$process-message", document)
    assert disabled.status_code == 401
    token = api_token(running.store, "sender", name="gp-c")
    with running.store.begin() as conn:
        [row] = list_tokens(conn, "gp-c")
        revoke_token(conn, row["id"], actor="test")
    revoked = _post(
        client, "/fhir/inbox/$process-message", document, Authorization=f"Bearer {token}"
    )
    assert revoked.status_code == 401


def test_an_unauthenticated_body_is_not_read_past_what_is_kept(engine):
    running, client = engine
    client.headers.pop("Authorization")
    body = b'{"resourceType": "Bundle", "padding": "' + b"x" * 5_000_000 + b'"}'
    answer = client.post("/fhir/anyone/Bundle", content=body, headers=FHIR)
    assert answer.status_code == 404  # auth: none; the channel takes no Bundle
    # Announced whole, sent in part: a client sending it all may see the connection reset
    # (closed with the rest unread) before it reads the answer.
    path, start = "/fhir/inbox/$process-message", body[: 200 * 1024]
    answer = announced_post(client.base_url, path, FHIR, start, len(body))
    assert answer.status_code == 401  # not 413: refused before the body is read
    [_, stored] = _refused(running)
    assert stored.error.startswith("rejected (401)")
    assert stored.raw == body[: 64 * 1024]


def test_a_store_that_cannot_commit_answers_503_and_nothing_is_acknowledged(
    tmp_path, receiver, bars_samples
):
    path = tmp_path / "locked.db"
    config = engine_config(tmp_path, f"sqlite:///{path}", sqlite={"busy_timeout": "200ms"})
    running = RunningEngine(config, _channels(receiver), http=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}", timeout=10)
    as_sender(running.store, client)
    document = bars_samples["servicerequest-request_validation"]
    try:
        locker = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            down = _post(client, "/fhir/inbox/$process-message", document)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert down.status_code == 503
        [issue] = down.json()["issue"]
        assert issue["code"] == "transient"
        assert issue["details"]["coding"][0]["code"] == "SERVICE_UNAVAILABLE"
        assert _rows(running) == []

        again = _post(client, "/fhir/inbox/$process-message", document)
        assert again.status_code == 202
        assert [r.control_id for r in _rows(running)] == [document["id"]]
    finally:
        client.close()
        running.stop()


def test_registry_reads_are_audited_views(engine, bars_samples):
    running, client = engine
    document = bars_samples["servicerequest-request_validation"]
    assert _post(client, "/fhir/inbox/$process-message", document).status_code == 202
    [row] = _rows(running)
    [indexed] = service_requests(document)
    with running.store.begin() as conn:
        registry.index(conn, "inbox", row.id, [indexed], sender="a", receiver="b", now=utcnow())
    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}

    found = client.get("/fhir/inbox/ServiceRequest", params={"status": "active"}, headers=auth)
    assert found.json()["total"] == 1
    none = client.get("/fhir/inbox/ServiceRequest", params={"status": "x"}, headers=auth)
    assert none.json()["total"] == 0
    assert "entry" not in none.json()
    read = client.get(f"/fhir/inbox/ServiceRequest/{indexed.resource_id}", headers=auth)
    assert read.status_code == 200
    assert client.get("/fhir/inbox/ServiceRequest/nope", headers=auth).status_code == 404

    a = audit_events.c
    with running.store.read() as conn:
        query = select(a.actor, a.target, a.details).where(a.action == "view").order_by(a.id)
        views = [(r.actor, r.target, json.loads(r.details)) for r in conn.execute(query)]
    assert views == [
        ("sam", "fhir:inbox/ServiceRequest", {"via": "api", "found": [indexed.resource_id]}),
        ("sam", "fhir:inbox/ServiceRequest", {"via": "api", "found": []}),
        ("sam", f"fhir:inbox/ServiceRequest/{indexed.resource_id}", {"via": "api"}),
    ]


def _found_by_key(running: RunningEngine, client: httpx.Client, key: str) -> list[Any]:
    """The messages ``/api/messages?key=`` finds, as support searches for a quoted id."""
    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}
    answer = client.get("/api/messages", params={"key": key}, headers=auth)
    assert answer.status_code == 200, answer.text
    return answer.json()["messages"]


def test_every_answer_carries_an_x_request_id_that_finds_what_was_stored(engine, bars_samples):
    """A caller at 3 a.m. has an id to quote to support: every answer under /fhir carries
    X-Request-Id (its own, else one tie gives), and a search by it finds what was stored."""
    running, client = engine
    document = bars_samples["booking-request_process-message"]
    accepted = _post(client, "/fhir/inbox/$process-message", document)
    refused = client.post("/fhir/inbox/$process-message", content=b"<Bundle/>")
    for answer, status in ((accepted, 202), (refused, 415)):
        assert answer.status_code == status
        [found] = _found_by_key(running, client, answer.headers["x-request-id"])
        assert found["uuid"] == answer.headers["x-request-id"]

    own = f"caller-{uuid4()}"
    resent = {**document, "id": str(uuid4())}
    for answer in (
        _post(client, "/fhir/inbox/$process-message", resent, **{"X-Request-Id": own}),
        client.post("/fhir/inbox/$process-message", content=b"{", headers={"X-Request-Id": own}),
    ):
        assert answer.headers["x-request-id"] == own
    found = _found_by_key(running, client, own)
    assert len(found) == 2 and "error" in {m["status"] for m in found}

    too_long = "x" * 300
    answer = _post(client, "/fhir/inbox/$process-message", resent, **{"X-Request-Id": too_long})
    assert answer.headers["x-request-id"] != too_long

    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}
    unstored = (
        client.get("/fhir/nowhere"),  # the framework's 404
        client.put("/fhir/inbox/$process-message"),  # 405
        client.post("/fhir/nowhere/$process-message", content=b"{}"),  # no such channel
        client.get("/fhir/inbox/ServiceRequest", headers=auth),  # the registry
        client.get("/proxy/https://provider.example/Slot"),  # no booking proxy
    )
    for answer in unstored:
        assert answer.headers.get("x-request-id"), (answer.request.url, answer.status_code)
    mirrored = client.get("/fhir/inbox/ServiceRequest", headers={**auth, "X-Request-Id": own})
    assert mirrored.headers["x-request-id"] == own


def test_a_client_that_asks_for_another_fhir_version_gets_406(engine, bars_samples):
    """http.html: a server that does not support the fhirVersion asked for answers 406."""
    running, client = engine
    document = bars_samples["booking-request_process-message"]
    stu3 = "application/fhir+json;fhirVersion=3.0"
    refused = _post(client, "/fhir/inbox/$process-message", document, Accept=stu3)
    assert refused.status_code == 406
    assert "fhirVersion=4.0" in refused.json()["issue"][0]["diagnostics"]
    by_format = _post(
        client,
        "/fhir/inbox/$process-message?_format=application/fhir%2Bjson;fhirVersion=3.0",
        document,
    )
    assert by_format.status_code == 406
    assert by_format.json()["issue"][0]["expression"] == ["_format"]
    assert len(_refused(running)) == 2
    either = f"{stu3}, application/fhir+json;fhirVersion=4.0.1"
    taken = _post(client, "/fhir/inbox/$process-message", document, Accept=either)
    assert taken.status_code == 202
    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}
    searched = client.get("/fhir/inbox/ServiceRequest", headers={**auth, "Accept": stu3})
    assert searched.status_code == 406


def test_registry_reads_answer_406_to_a_client_that_asks_for_xml(engine):
    running, client = engine
    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}
    xml = {**auth, "Accept": "application/fhir+xml"}
    for path in ("/fhir/inbox/ServiceRequest", "/fhir/inbox/ServiceRequest/sr-1"):
        refused = client.get(path, headers=xml)
        assert refused.status_code == 406, path
        assert refused.json()["issue"][0]["code"] == "not-supported"
        assert client.get(path, params={"_format": "xml"}, headers=auth).status_code == 406
    searched = client.get("/fhir/inbox/ServiceRequest", params={"_format": "json"}, headers=auth)
    assert searched.status_code == 200
    assert "entry" not in searched.json()  # _format is understood, not an ignored parameter


def test_the_registry_count_is_a_number_it_can_use(engine):
    running, client = engine
    auth = {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}
    for count in ("²", "-1", "9" * 25, "ten"):
        answer = client.get("/fhir/inbox/ServiceRequest", params={"_count": count}, headers=auth)
        assert answer.status_code == 400, count
        assert answer.json()["issue"][0]["diagnostics"] == "_count is a number from 0"


def _request(rid: str, status: str = "active", *identifiers: tuple[str, str]) -> IndexedRequest:
    resource = {"resourceType": "ServiceRequest", "id": rid, "status": status}
    return IndexedRequest(rid, status, "9000000009", identifiers, resource)


def _registry(
    running: RunningEngine, client: httpx.Client, document: Any, *items: IndexedRequest
) -> dict[str, str]:
    """``items`` in the registry of ``inbox`` (oldest first); a support user's headers."""
    assert _post(client, "/fhir/inbox/$process-message", document).status_code == 202
    [row] = _rows(running)
    for item in items:
        with running.store.begin() as conn:
            registry.index(conn, "inbox", row.id, [item], sender="a", receiver="b", now=utcnow())
    return {"Authorization": f"Bearer {api_token(running.store, 'support', name='sam')}"}


def test_the_registry_total_counts_every_match_not_the_page(engine, bars_samples):
    running, client = engine
    requests = [_request(f"sr-{n}") for n in range(3)]
    auth = _registry(running, client, bars_samples[REQUESTS[0]], *requests)
    params = {"status": "active", "_count": "2"}
    page = client.get("/fhir/inbox/ServiceRequest", params=params, headers=auth).json()
    assert page["total"] == 3
    assert [e["resource"]["id"] for e in page["entry"]] == ["sr-2", "sr-1"]


def test_a_registry_search_with_count_0_answers_only_the_total(engine, bars_samples):
    running, client = engine
    auth = _registry(running, client, bars_samples[REQUESTS[0]], _request("a"), _request("b"))
    params = {"status": "active", "_count": "0"}
    answer = client.get("/fhir/inbox/ServiceRequest", params=params, headers=auth)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert (bundle["type"], bundle["total"]) == ("searchset", 2)
    assert "entry" not in bundle  # FHIR JSON has no empty arrays
    with running.store.read() as conn:
        [details] = conn.scalars(
            select(audit_events.c.details).where(audit_events.c.action == "view")
        ).all()
    assert json.loads(details) == {"via": "api", "found": []}


def test_a_repeated_registry_parameter_is_and_and_a_comma_or(engine, bars_samples):
    running, client = engine
    requests = [_request("a", "active"), _request("b", "revoked")]
    auth = _registry(running, client, bars_samples[REQUESTS[0]], *requests)

    def total(query: str) -> int:
        answer = client.get(f"/fhir/inbox/ServiceRequest?{query}", headers=auth)
        assert answer.status_code == 200, answer.text
        return answer.json()["total"]

    assert total("status=active&status=revoked") == 0  # was the last one's: 1
    assert total("status=active,revoked") == 2
    assert total("status=active&status=active,revoked") == 1
    too_many = "&".join(["status=active"] * 51)
    answer = client.get(f"/fhir/inbox/ServiceRequest?{too_many}", headers=auth)
    assert answer.status_code == 400
    assert answer.json()["issue"][0]["code"] == "too-costly"


def test_unknown_registry_parameters_are_ignored_unless_strict_and_modifiers_refused(
    engine, bars_samples
):
    running, client = engine
    requests = [_request("a", "active"), _request("b", "revoked")]
    auth = _registry(running, client, bars_samples[REQUESTS[0]], *requests)
    url = "/fhir/inbox/ServiceRequest"

    lenient = client.get(f"{url}?status=active&_elements=id&foo=1", headers=auth)
    assert lenient.status_code == 200, lenient.text
    bundle = lenient.json()
    assert bundle["total"] == 1
    # self names only the parameters used; an outcome entry the ones ignored.
    assert bundle["link"] == [{"relation": "self", "url": f"{client.base_url}{url}?status=active"}]
    [match, outcome] = bundle["entry"]
    assert match["resource"]["id"] == "a"
    assert outcome["search"] == {"mode": "outcome"}
    assert [(i["severity"], i["diagnostics"]) for i in outcome["resource"]["issue"]] == [
        ("warning", "unknown search parameter '_elements' ignored"),
        ("warning", "unknown search parameter 'foo' ignored"),
    ]

    strict = {**auth, "Prefer": "return=minimal, handling=strict"}
    refused = client.get(f"{url}?status=active&foo=1", headers=strict)
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["diagnostics"] == "unknown search parameter 'foo'"
    for total in ("accurate", "estimate", "none"):  # R4 result parameters, known
        answer = client.get(f"{url}?status=active&_total={total}", headers=strict)
        assert (answer.status_code, answer.json()["total"]) == (200, 1), total
    assert client.get(f"{url}?_total=some", headers=auth).status_code == 400

    # A modifier or form not supported would widen the search if ignored: always 400.
    for name in ("status:not", "status:missing", "identifier:exact", "patient", "patient.name"):
        refused = client.get(url, params={name: "x"}, headers=auth)
        assert refused.status_code == 400, name
        assert refused.headers["content-type"] == "application/fhir+json"
        [issue] = refused.json()["issue"]
        assert (issue["code"], issue["expression"]) == ("not-supported", [name])


def test_registry_pages_link_to_each_other_and_need_the_token_too(engine, bars_samples):
    running, client = engine
    requests = [_request(f"sr-{n}") for n in range(5)]
    auth = _registry(running, client, bars_samples[REQUESTS[0]], *requests)

    def links(bundle: dict[str, Any]) -> dict[str, str]:
        return {link["relation"]: link["url"] for link in bundle["link"]}

    first = client.get("/fhir/inbox/ServiceRequest?status=active&_count=2", headers=auth).json()
    pages = [first]
    while "next" in links(pages[-1]):
        url = links(pages[-1])["next"]
        assert httpx.get(url).status_code == 401  # a link carries no credentials
        pages.append(client.get(url, headers=auth).json())
    assert [[e["resource"]["id"] for e in page["entry"]] for page in pages] == [
        ["sr-4", "sr-3"],
        ["sr-2", "sr-1"],
        ["sr-0"],
    ]
    assert {page["total"] for page in pages} == {5}
    assert [set(links(page)) for page in pages] == [
        {"self", "next"},
        {"self", "next", "previous"},
        {"self", "previous"},
    ]
    back = client.get(links(pages[2])["previous"], headers=auth).json()
    assert [e["resource"]["id"] for e in back["entry"]] == ["sr-2", "sr-1"]
    with running.store.read() as conn:
        views = conn.scalars(
            select(audit_events.c.details).where(audit_events.c.action == "view")
        ).all()
    assert [json.loads(v)["found"] for v in views] == [
        ["sr-4", "sr-3"],
        ["sr-2", "sr-1"],
        ["sr-0"],
        ["sr-2", "sr-1"],
    ]
    bad = client.get("/fhir/inbox/ServiceRequest?_offset=-1", headers=auth)
    assert bad.json()["issue"][0]["diagnostics"] == "_offset is a number from 0"


def test_registry_searches_sort_by_last_updated_either_way(engine, bars_samples):
    running, client = engine
    requests = [_request(f"sr-{n}") for n in range(4)]
    auth = _registry(running, client, bars_samples[REQUESTS[0]], *requests)
    oldest = client.get("/fhir/inbox/ServiceRequest?_sort=_lastUpdated&_count=2", headers=auth)
    bundle = oldest.json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["sr-0", "sr-1"]
    [next_page] = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
    later = client.get(next_page, headers=auth).json()
    assert [e["resource"]["id"] for e in later["entry"]] == ["sr-2", "sr-3"]
    newest = client.get("/fhir/inbox/ServiceRequest?_sort=-_lastUpdated", headers=auth).json()
    assert [e["resource"]["id"] for e in newest["entry"]] == ["sr-3", "sr-2", "sr-1", "sr-0"]
    unsorted = client.get("/fhir/inbox/ServiceRequest?_sort=status", headers=auth)
    assert unsorted.status_code == 400
    assert unsorted.json()["issue"][0]["expression"] == ["_sort"]
