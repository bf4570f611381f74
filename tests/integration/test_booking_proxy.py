"""The booking proxy against a real provider: a slot is searched and booked through tie, the
provider's answers (201, 422) come back unchanged, every exchange is stored by trace id,
and nothing reaches a host or path the directory does not give for the ASIDs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import sha256
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import select
from tie_testing import (
    Certificates,
    HttpReceiver,
    Received,
    RunningEngine,
    api_token,
    as_sender,
    channel,
    engine_config,
    engine_over_http,
    free_ports,
    make_certificates,
    serving,
    wait_until,
)

from router.directory import Key, make_endpoint
from router.store.schema import attempts, deliveries, messages

TOKEN = "tie_proxy-operator-token"
PROVIDER = Key("asid", "200000000115")
CONSUMER = Key("asid", "200000000116")
SEARCH = "urn:nhs:names:services:careconnect:fhir:rest:search:slot"
BOOK = "urn:nhs:names:services:careconnect:fhir:rest:create:appointment"
MAX_BODY = 1024 * 1024  # the proxy's bound on what it is sent and what it passes back
SLOTS = {
    "resourceType": "Bundle",
    "type": "searchset",
    "entry": [{"resource": {"resourceType": "Slot", "id": "slot-1", "status": "free"}}],
}
GONE = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "conflict", "diagnostics": "slot no longer free"}],
}


class Provider:
    """A UEC appointment provider: slots, bookings (the first only), and a slow mode."""

    def __init__(self) -> None:
        self.booked: list[Any] = []
        self.slow = False
        self.server = HttpReceiver(self._answer)

    async def _answer(self, request: Received) -> Any:
        if self.slow:
            await asyncio.sleep(2.0)
        fhir = {"Content-Type": "application/fhir+json", "X-Provider": "uec-test"}
        if request.method == "GET" and request.path == "/STU3/Slot":
            return 200, json.dumps(SLOTS).encode(), fhir
        if request.method == "GET" and request.path == "/STU3/Schedule":
            return 200, b"{}", {**fhir, "Set-Cookie": "tie_session=planted; Path=/"}
        if request.method == "GET" and request.path == "/STU3/Location":
            return 200, b"{}", {**fhir, "Set-Cookie": "provider=kept; Path=/"}
        if request.method == "GET" and request.path == "/STU3/Binary":
            return 200, b"x" * (MAX_BODY + 1), fhir
        if request.method == "POST" and request.path == "/STU3/Appointment":
            if self.booked:
                return 422, json.dumps(GONE).encode(), fhir
            self.booked.append(request.json())
            return 201, request.body, {**fhir, "Location": "/STU3/Appointment/appt-1/_history/1"}
        return 404

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def provider() -> Iterator[Provider]:
    with serving(Provider()) as p:
        yield p


@pytest.fixture
def elsewhere() -> Iterator[HttpReceiver]:
    """A host the proxy must never reach."""
    with serving(HttpReceiver()) as server:
        yield server


@pytest.fixture
def tie(
    tmp_path: Path, store_url: str, provider: Provider
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    with proxy_engine(tmp_path, store_url, provider) as tie:
        yield tie


@pytest.fixture
def tie_small_blobs(
    tmp_path: Path, store_url: str, provider: Provider
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    """The proxy with a blob threshold below what it keeps of a refused request (64 KiB)."""
    with proxy_engine(tmp_path, store_url, provider, blobs={"threshold": "32KB"}) as tie:
        yield tie


@contextmanager
def proxy_engine(
    tmp_path: Path, store_url: str, provider: Provider, **settings: Any
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    api_token(store_url, token=TOKEN)
    options = {"timeout": "1s", "max_body": MAX_BODY}
    proxy = channel({"name": "booking-proxy", "source": {"proxy": options}})
    endpoints = [
        make_endpoint(key, interaction, "fhir", url)
        for key, url in (
            (PROVIDER, provider.server.url + "/STU3"),
            (CONSUMER, "http://consumer.example"),
        )
        for interaction in (SEARCH, BOOK)
    ]
    config = engine_config(tmp_path, store_url, **settings)
    with engine_over_http(config, {"booking-proxy": proxy}, endpoints=endpoints) as tie:
        as_sender(tie[0].store, tie[1], proxy=True)
        yield tie


def ssp(interaction: str, trace: str | None = None, **override: str) -> dict[str, str]:
    headers = {
        "Ssp-TraceID": trace or str(uuid4()),
        "Ssp-From": CONSUMER.identifier,
        "Ssp-To": PROVIDER.identifier,
        "Ssp-InteractionID": interaction,
        "Authorization": "Bearer consumer-jwt",
        "Accept": "application/fhir+json",
    }
    headers.update(override)
    return headers


def stored(running: RunningEngine, trace: str) -> Any:
    with running.store.read() as conn:
        return conn.execute(
            select(
                messages.c.status,
                messages.c.error,
                messages.c.message_type,
                messages.c.sender,
                messages.c.raw,
                messages.c.source,
                deliveries.c.status.label("delivery"),
                deliveries.c.address,
                deliveries.c.id.label("delivery_id"),
            )
            .outerjoin(deliveries, deliveries.c.message_id == messages.c.id)
            .where(messages.c.control_id == trace)
        ).first()


def test_a_slot_is_searched_and_booked_through_the_proxy(tie, provider):
    running, client = tie
    base = f"/proxy/{provider.server.url}/STU3"
    trace = str(uuid4())
    found = client.get(f"{base}/Slot?start=ge2024-01-05&status=free", headers=ssp(SEARCH, trace))
    assert found.status_code == 200
    assert found.json() == SLOTS
    assert found.headers["x-provider"] == "uec-test"
    [search] = provider.server.received
    assert (search.path, search.query) == ("/STU3/Slot", "start=ge2024-01-05&status=free")
    assert search.headers["ssp-traceid"] == trace
    assert search.headers["authorization"] == "Bearer consumer-jwt"
    assert search.headers["host"] == provider.server.url.removeprefix("http://")

    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "slot": [{"reference": "Slot/slot-1"}],
    }
    booking = ssp(BOOK, **{"Content-Type": "application/fhir+json"})
    booked = client.post(f"{base}/Appointment", content=json.dumps(appointment), headers=booking)
    assert booked.status_code == 201
    assert booked.headers["location"] == "/STU3/Appointment/appt-1/_history/1"
    assert booked.json() == appointment
    assert provider.booked == [appointment]

    again = ssp(BOOK, **{"Content-Type": "application/fhir+json"})
    taken = client.post(f"{base}/Appointment", content=json.dumps(appointment), headers=again)
    assert taken.status_code == 422
    assert taken.json() == GONE

    # Every exchange is stored and found by its trace id.
    row = wait_until(lambda: stored(running, booking["Ssp-TraceID"]))
    assert (row.status, row.delivery, row.message_type, row.sender) == (
        "processed",
        "sent",
        BOOK,
        CONSUMER.identifier,
    )
    assert json.loads(row.raw) == appointment
    assert row.address == f"{provider.server.url}/STU3/Appointment"
    assert "authorization" not in json.loads(row.source)["headers"]
    with running.store.read() as conn:
        [attempt] = conn.execute(
            select(attempts).where(attempts.c.delivery_id == row.delivery_id)
        ).all()
    assert attempt.response.startswith(b"HTTP/1.1 201 Created")
    refused = wait_until(lambda: stored(running, again["Ssp-TraceID"]))
    assert refused.delivery == "failed"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    listed = client.get("/api/messages", params={"key": trace}, headers=auth).json()
    assert [m["control_id"] for m in listed["messages"]] == [trace]
    # One caller's exchanges are not one conversation: Ssp-From names who sent them.
    detail = client.get(f"/api/messages/{booked.headers['x-request-id']}", headers=auth).json()
    assert {"key": "ssp_from", "value": str(CONSUMER)} in detail["correlations"]
    assert [m["control_id"] for m in detail["timeline"]] == [booking["Ssp-TraceID"]]


@pytest.mark.parametrize(
    ("change", "status", "where", "text"),
    [
        ({"Ssp-TraceID": ""}, 400, "Ssp-TraceID", "header is missing"),
        ({"Ssp-TraceID": "not-a-uuid"}, 400, "Ssp-TraceID", "not a UUID"),
        ({"Ssp-From": "abc"}, 400, "Ssp-From", "not an ASID"),
        ({"Ssp-To": "20000000011x"}, 400, "Ssp-To", "not an ASID"),
        ({"Ssp-From": "999999999999"}, 403, "Ssp-From", "not registered for"),
        (
            {"Ssp-InteractionID": BOOK.replace("create", "cancel")},
            403,
            "Ssp-From",
            "not registered",
        ),
        ({"Ssp-To": "999999999999"}, 404, "Ssp-To", "has no endpoint for"),
    ],
)
def test_callers_and_providers_the_directory_does_not_know_are_refused(
    tie, provider, change, status, where, text
):
    running, client = tie
    headers = ssp(SEARCH)
    headers.update(change)
    headers = {k: v for k, v in headers.items() if v}
    answer = client.get(f"/proxy/{provider.server.url}/STU3/Slot", headers=headers)
    assert answer.status_code == status
    [issue] = answer.json()["issue"]
    assert issue["expression"] == [where]
    assert text in issue["diagnostics"]
    assert provider.server.received == []
    if headers.get("Ssp-TraceID", "").count("-") == 4:
        row = wait_until(lambda: stored(running, headers["Ssp-TraceID"]))
        assert (row.status, row.delivery) == ("error", None)
        assert row.error.startswith(f"refused ({status})")


def test_it_is_never_an_open_proxy(tie, provider, elsewhere):
    _, client = tie
    port = provider.server.port
    for url in (
        f"{elsewhere.url}/STU3/Slot",  # another host
        f"http://localhost:{port}/STU3/Slot",  # another name for it
        f"{provider.server.url}/admin",  # outside the endpoint's path
        f"{provider.server.url}/STU3x/Slot",  # a prefix that is not a path segment
        f"{provider.server.url}/STU3/%2e%2e/admin",  # climbing out
        f"http://user@127.0.0.1:{port}/STU3/Slot",  # user info
        "file:///etc/passwd",
    ):
        answer = client.get(f"/proxy/{url}", headers=ssp(SEARCH))
        assert answer.status_code == 403, url
        assert "is not under the endpoint" in answer.json()["issue"][0]["diagnostics"]
    assert elsewhere.received == []
    assert provider.server.received == []


def test_a_squashed_double_slash_is_restored(tie, provider):
    _, client = tie
    squashed = provider.server.url.replace("http://", "http:/")
    answer = client.get(f"/proxy/{squashed}/STU3/Slot", headers=ssp(SEARCH))
    assert answer.status_code == 200
    assert answer.json() == SLOTS


def test_ties_own_session_and_csrf_token_are_not_passed_to_the_provider(tie, provider):
    _, client = tie
    headers = ssp(
        SEARCH, **{"Cookie": "tie_session=console-session; provider=kept", "X-CSRF-Token": "csrf"}
    )
    answer = client.get(f"/proxy/{provider.server.url}/STU3/Slot", headers=headers)
    assert answer.status_code == 200
    only_tie = ssp(SEARCH, Cookie="tie_session=console-session")
    assert client.get(f"/proxy/{provider.server.url}/STU3/Slot", headers=only_tie).is_success
    first, second = provider.server.received
    assert first.headers["cookie"] == "provider=kept"
    assert "x-csrf-token" not in first.headers
    assert "cookie" not in second.headers
    assert first.headers["authorization"] == "Bearer consumer-jwt"  # the provider's, passed on


def test_a_provider_cannot_set_ties_own_cookies_on_the_caller(tie, provider):
    _, client = tie
    planted = client.get(f"/proxy/{provider.server.url}/STU3/Schedule", headers=ssp(SEARCH))
    own = client.get(f"/proxy/{provider.server.url}/STU3/Location", headers=ssp(SEARCH))
    assert (planted.status_code, own.status_code) == (200, 200)
    assert "set-cookie" not in planted.headers
    assert own.headers["set-cookie"] == "provider=kept; Path=/"


def test_a_provider_that_is_down_or_slow_is_logged_once(tie, provider, caplog):
    running, client = tie
    provider.slow = True
    slow = ssp(SEARCH)
    answer = client.get(f"/proxy/{provider.server.url}/STU3/Slot", headers=slow)
    assert answer.status_code == 504
    assert "did not answer within 1s" in answer.json()["issue"][0]["diagnostics"]
    row = wait_until(lambda: stored(running, slow["Ssp-TraceID"]))
    assert (row.status, row.delivery) == ("processed", "failed")

    (port,) = free_ports(1)
    running.register([make_endpoint(PROVIDER, SEARCH, "fhir", f"http://127.0.0.1:{port}/STU3")])
    url = f"http://127.0.0.1:{port}/STU3/Slot?patient=9000000009"
    with caplog.at_level(logging.WARNING, logger="router.fhir.proxy"):
        down = client.get(f"/proxy/{url}", headers=ssp(SEARCH))
        again = client.get(f"/proxy/{url}", headers=ssp(SEARCH))
    assert (down.status_code, again.status_code) == (502, 502)
    assert "could not be reached" in down.json()["issue"][0]["diagnostics"]
    # A line for each provider (the slow one's 504 too), not one a request, and nothing of
    # the request's URL beyond its origin (a query can carry a patient's identifiers).
    lines = [r.getMessage() for r in caplog.records if r.name == "router.fhir.proxy"]
    assert {r.levelname for r in caplog.records if r.name == "router.fhir.proxy"} == {"WARNING"}
    assert [line.split(" not delivered to ")[0] for line in lines] == [
        f"booking-proxy/provider: message {answer.headers['x-request-id']}",
        f"booking-proxy/provider: message {down.headers['x-request-id']}",
    ]
    assert "the sender was answered 504" in lines[0]
    assert f"to http://127.0.0.1:{port}, the sender was answered 502" in lines[1]
    assert "9000000009" not in caplog.text and "/STU3" not in caplog.text


def test_an_oversized_answer_is_not_passed_on(tie, provider):
    running, client = tie
    headers = ssp(SEARCH)
    answer = client.get(f"/proxy/{provider.server.url}/STU3/Binary", headers=headers)
    assert answer.status_code == 502
    assert f"the answer is larger than {MAX_BODY} bytes" in answer.json()["issue"][0]["diagnostics"]
    row = wait_until(lambda: stored(running, headers["Ssp-TraceID"]))
    assert (row.status, row.delivery) == ("processed", "failed")


def test_an_oversized_request_is_refused_and_kept_with_the_reason(tie, provider):
    running, client = tie
    body = b"x" * (MAX_BODY + 1)
    headers = ssp(BOOK)
    answer = client.post(
        f"/proxy/{provider.server.url}/STU3/Appointment", content=body, headers=headers
    )
    assert answer.status_code == 413
    assert provider.server.received == []
    row = wait_until(lambda: stored(running, headers["Ssp-TraceID"]))
    assert (row.status, row.delivery) == ("error", None)
    assert row.error.startswith("refused (413): the body is larger than")
    assert len(row.raw) <= 64 * 1024


def test_large_requests_are_kept_as_one_blob_their_delivery_names_too(tie_small_blobs, provider):
    running, client = tie_small_blobs
    url = f"/proxy/{provider.server.url}/STU3/Appointment"
    appointment = {"resourceType": "Appointment", "status": "booked", "comment": "x" * 65536}
    body = json.dumps(appointment).encode()
    booking = ssp(BOOK, **{"Content-Type": "application/fhir+json"})
    assert client.post(url, content=body, headers=booking).status_code == 201
    # A refusal keeps the first 64 KiB of what it was sent: a blob here too.
    unknown = ssp(BOOK, **{"Proxy-Authorization": "Bearer tie_not-a-token"})
    assert client.post(url, content=b"x" * (MAX_BODY // 2), headers=unknown).status_code == 407

    booked = wait_until(lambda: stored(running, booking["Ssp-TraceID"]))
    refused = wait_until(lambda: stored(running, unknown["Ssp-TraceID"]))
    with running.store.read() as conn:
        kept = {
            row.control_id: row
            for row in conn.execute(
                select(messages.c.control_id, messages.c.raw, messages.c.blob_sha256)
            )
        }
        delivery = conn.execute(
            select(deliveries.c.payload, deliveries.c.blob_sha256, deliveries.c.blob_size).where(
                deliveries.c.id == booked.delivery_id
            )
        ).one()
    digest = sha256(body).hexdigest()
    assert kept[booking["Ssp-TraceID"]][1:] == (b"", digest)
    assert tuple(delivery) == (b"", digest, len(body))
    assert running.store.blobs.path(digest).read_bytes() == body
    assert refused.status == "error"
    assert kept[unknown["Ssp-TraceID"]][1:] == (b"", sha256(b"x" * 64 * 1024).hexdigest())


def test_the_proxy_takes_a_senders_token_in_proxy_authorization_and_keeps_it(tie, provider):
    """The caller's Authorization is the provider's; tie's sender token comes in
    Proxy-Authorization (407 with Proxy-Authenticate without one, 403 for a user who is no
    sender), and neither it nor any tie token reaches the provider."""
    running, client = tie
    url = f"/proxy/{provider.server.url}/STU3/Slot"
    sender = client.headers.pop("Proxy-Authorization")
    viewer = f"Bearer {api_token(running.store, 'viewer', name='watcher')}"
    refusals = []
    for headers, status in (
        ({}, 407),
        ({"Authorization": sender}, 407),  # tie's token in the provider's header
        ({"Proxy-Authorization": "Bearer tie_not-a-token"}, 407),
        ({"Proxy-Authorization": viewer}, 403),
    ):
        trace = str(uuid4())
        answer = client.get(url, headers={**ssp(SEARCH, trace), **headers})
        assert answer.status_code == status, headers
        assert answer.headers["content-type"] == "application/fhir+json"
        [issue] = answer.json()["issue"]
        assert issue["code"] == ("login" if status == 407 else "forbidden")
        if status == 407:
            assert answer.headers["proxy-authenticate"] == "Bearer"
            assert "Proxy-Authorization" in issue["diagnostics"]
        refusals.append(trace)
    assert provider.server.received == []
    for trace in refusals:
        row = wait_until(lambda trace=trace: stored(running, trace))
        assert (row.status, row.delivery) == ("error", None)
        assert row.error.startswith(("refused (407)", "refused (403)"))

    mistaken = ssp(SEARCH, Authorization=sender)  # a tie token where the provider's goes
    for headers in (ssp(SEARCH), mistaken):
        answer = client.get(url, headers={**headers, "Proxy-Authorization": sender})
        assert answer.status_code == 200
    passed, without = provider.server.received
    assert passed.headers["authorization"] == "Bearer consumer-jwt"
    assert "proxy-authorization" not in passed.headers
    assert "authorization" not in without.headers and "proxy-authorization" not in without.headers
    row = wait_until(lambda: stored(running, mistaken["Ssp-TraceID"]))
    assert json.loads(row.source)["user"] == "sender"


def _found_by_key(client: httpx.Client, key: str) -> list[Any]:
    """The messages ``/api/messages?key=`` finds, as support searches for a quoted id."""
    api = {"Authorization": f"Bearer {TOKEN}", "Proxy-Authorization": ""}
    answer = client.get("/api/messages", params={"key": key}, headers=api)
    assert answer.status_code == 200, answer.text
    return answer.json()["messages"]


def test_every_answer_carries_an_x_request_id_that_finds_what_was_stored(tie, provider):
    """A caller refused (or failed) at night has an id to quote: each of the proxy's own
    answers carries X-Request-Id, and a search by it finds the stored request."""
    running, client = tie
    url = f"/proxy/{provider.server.url}/STU3/Slot"
    sender = client.headers["Proxy-Authorization"]
    provider.slow = True
    for change, status in (
        ({"Proxy-Authorization": ""}, 407),
        ({"Ssp-From": "not-an-asid"}, 400),
        ({"Ssp-From": "999999999999"}, 403),
        ({"Proxy-Authorization": sender}, 504),
    ):
        trace = str(uuid4())
        answer = client.get(url, headers={**ssp(SEARCH, trace), **change})
        assert answer.status_code == status, change
        request_id = answer.headers["x-request-id"]
        row = wait_until(lambda trace=trace: stored(running, trace))
        assert row.error is None or row.error.startswith(f"refused ({status})")
        [found] = wait_until(lambda request_id=request_id: _found_by_key(client, request_id))
        assert found["control_id"] == trace

    provider.slow = False
    own = {"X-Request-Id": f"caller-{uuid4()}"}
    for change, status in (({"Ssp-From": "999999999999"}, 403), ({}, 200)):
        trace = str(uuid4())
        answer = client.get(url, headers={**ssp(SEARCH, trace), **own, **change})
        assert answer.status_code == status
        assert answer.headers["x-request-id"] == own["X-Request-Id"]  # the caller's, mirrored
        wait_until(lambda trace=trace: stored(running, trace))
    found = _found_by_key(client, own["X-Request-Id"])
    assert sorted(m["status"] for m in found) == ["error", "processed"]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("provider-tls"))


def _through_tls_proxy(
    folder: Path, store_url: str, provider: HttpReceiver, tls: dict[str, str]
) -> tuple[httpx.Response, Any, str | None]:
    """A slot search through a proxy with ``tls``: the answer, the stored exchange and its
    attempt's error."""
    proxy = channel({"name": "booking-proxy", "source": {"proxy": {"auth": "none", "tls": tls}}})
    endpoints = [
        make_endpoint(PROVIDER, SEARCH, "fhir", provider.url + "/STU3"),
        make_endpoint(CONSUMER, SEARCH, "fhir", "http://consumer.example"),
    ]
    folder.mkdir()
    config = engine_config(folder, store_url)
    with engine_over_http(config, {"booking-proxy": proxy}, endpoints=endpoints) as tie:
        running, client = tie
        trace = str(uuid4())
        answered = client.get(f"/proxy/{provider.url}/STU3/Slot", headers=ssp(SEARCH, trace))
        row = wait_until(lambda: stored(running, trace))
        with running.store.read() as conn:
            query = select(attempts.c.error).where(attempts.c.delivery_id == row.delivery_id)
            return answered, row, conn.scalar(query)


def test_a_provider_over_mutual_tls_with_a_private_ca(tmp_path, store_url, certificates):
    """Spine's providers take mutual TLS under a private CA: with the channel's ``tls`` the
    exchange goes through; without the CA the 502 and the stored attempt say that the
    certificate could not be verified, not a bare ConnectError."""
    answer = (200, json.dumps(SLOTS).encode(), {"Content-Type": "application/fhir+json"})
    with serving(HttpReceiver(lambda r: answer, tls=certificates.server_tls())) as provider:
        mutual = {
            "ca": str(certificates.ca),
            "cert": str(certificates.client_cert),
            "key": str(certificates.client_key),
        }
        answered, row, error = _through_tls_proxy(tmp_path / "a", store_url, provider, mutual)
        assert (answered.status_code, answered.json(), row.delivery) == (200, SLOTS, "sent")

        answered, row, error = _through_tls_proxy(tmp_path / "b", store_url, provider, {})
        assert answered.status_code == 502
        assert "certificate verify failed" in answered.json()["issue"][0]["diagnostics"]
        assert row.delivery == "failed"
        assert "certificate verify failed" in (error or "")
        assert len(provider.received) == 1

        # The CA but no client certificate: TLS 1.3 refuses it only at the first read,
        # which looks like a bare disconnect; the answer and the attempt say why.
        trusted = {"ca": str(certificates.ca)}
        answered, row, error = _through_tls_proxy(tmp_path / "c", store_url, provider, trusted)
        assert answered.status_code == 502
        diagnostics = answered.json()["issue"][0]["diagnostics"]
        assert "closed the connection after the TLS handshake" in diagnostics
        assert "may require a client certificate" in (error or "")
        assert len(provider.received) == 1
