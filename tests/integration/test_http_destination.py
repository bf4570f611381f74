"""The HTTP destination against real uvicorn receivers: answers, retries, Retry-After, timeouts,
a receiver that is down, the directory's base URL, and mutual TLS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import (
    Certificates,
    HttpReceiver,
    Received,
    RunningEngine,
    channel,
    engine_config,
    free_ports,
    hl7_message,
    make_certificates,
    wait_until,
)

from router.directory import Key, make_endpoint, put_endpoint
from router.store.schema import attempts, deliveries, messages

FAST_RETRY = {"max_attempts": 3, "backoff": ["50ms", "200ms"]}


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


class Setup:
    """An engine whose channel ``out`` takes HL7 v2 over MLLP and sends it over HTTP."""

    def __init__(self, tmp_path: Path, store_url: str, http: dict[str, Any], **dest: Any) -> None:
        config = channel(
            {
                "name": "out",
                "source": {"mllp": {"port": 0}},
                "destinations": {"rx": {"http": http, "retry": FAST_RETRY, **dest}},
            }
        )
        self.running = RunningEngine(engine_config(tmp_path, store_url), {"out": config})
        self.stopped = False

    def send(self, raw: bytes) -> None:
        with MLLPClient("127.0.0.1", self.running.port("out")) as client:
            client.send_message(raw)

    def delivery(self, control_id: str) -> Any:
        with self.running.store.read() as conn:
            return conn.execute(
                select(deliveries)
                .join(messages, messages.c.id == deliveries.c.message_id)
                .where(messages.c.control_id == control_id)
            ).first()

    def settled(self, control_id: str) -> Any:
        row = self.delivery(control_id)
        return row if row is not None and row.status in ("sent", "failed") else None

    def attempts(self, delivery_id: int) -> list[Any]:
        with self.running.store.read() as conn:
            return list(
                conn.execute(
                    select(attempts)
                    .where(attempts.c.delivery_id == delivery_id)
                    .order_by(attempts.c.number)
                )
            )

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.running.stop()


@pytest.fixture
def setup(tmp_path: Path, store_url: str) -> Iterator[Any]:
    made: list[Setup] = []

    def make(http: dict[str, Any], **dest: Any) -> Setup:
        made.append(Setup(tmp_path, store_url, http, **dest))
        return made[-1]

    yield make
    for s in made:
        s.stop()


def _msg(hl7_samples: dict[str, bytes], control_id: str) -> bytes:
    return hl7_message(hl7_samples["ORU_R01_nhs_nwgmsa_v251"], control_id)


def _control_id(request: Received) -> str:
    return request.body.split(b"\r")[0].split(b"|")[9].decode()


def test_a_delivery_is_posted_with_its_headers_and_the_answer_is_kept(setup, hl7_samples):
    receiver = HttpReceiver(
        lambda r: (201, b'{"resourceType":"OperationOutcome"}', {"Location": "Bundle/1"})
    )
    try:
        s = setup(
            {
                "url": receiver.url + "/fhir/",
                "path": "Bundle",
                "headers": {"X-Request-Id": "{message_uuid}", "X-Attempt": "{attempt}"},
            }
        )
        s.send(_msg(hl7_samples, "HTTP-1"))
        row = wait_until(lambda: s.settled("HTTP-1"))
        assert row.status == "sent"
        [request] = receiver.received
        assert (request.method, request.path) == ("POST", "/fhir/Bundle")
        assert request.headers["content-type"] == "x-application/hl7-v2+er7"
        assert request.headers["x-attempt"] == "1"
        with s.running.store.read() as conn:
            uuid = conn.scalar(select(messages.c.uuid).where(messages.c.control_id == "HTTP-1"))
        assert request.headers["x-request-id"] == uuid
        assert _control_id(request) == "HTTP-1"
        [attempt] = s.attempts(row.id)
        head, _, body = attempt.response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201 Created")
        assert b"location: Bundle/1" in head
        assert body == b'{"resourceType":"OperationOutcome"}'
    finally:
        receiver.stop()


def test_server_errors_are_retried_and_client_errors_fail_at_once(setup, hl7_samples):
    seen: dict[str, int] = {}

    def answer(request: Received) -> Any:
        control_id = _control_id(request)
        seen[control_id] = seen.get(control_id, 0) + 1
        if control_id == "FLAKY" and seen[control_id] == 1:
            return 503, b"busy"
        if control_id == "BAD":
            return 422, b'{"resourceType":"OperationOutcome","issue":[]}'
        return 200

    receiver = HttpReceiver(answer)
    try:
        s = setup({"url": receiver.url, "method": "PUT"})
        s.send(_msg(hl7_samples, "FLAKY"))
        s.send(_msg(hl7_samples, "BAD"))
        flaky = wait_until(lambda: s.settled("FLAKY"))
        bad = wait_until(lambda: s.settled("BAD"))
        assert {r.method for r in receiver.received} == {"PUT"}
        assert (flaky.status, flaky.attempts) == ("sent", 2)
        first, second = s.attempts(flaky.id)
        assert (first.outcome, first.error) == ("retrying", "HTTP 503 Service Unavailable")
        assert first.response.endswith(b"busy")
        assert second.outcome == "sent"
        assert (bad.status, bad.attempts, bad.last_error) == (
            "failed",
            1,
            "HTTP 422 Unprocessable Entity",
        )
        assert s.attempts(bad.id)[0].response.endswith(b'"issue":[]}')
    finally:
        receiver.stop()


def test_too_many_requests_waits_as_long_as_retry_after_says(setup, hl7_samples):
    answers = iter([(429, b"slow down", {"Retry-After": "1"})])
    receiver = HttpReceiver(lambda r: next(answers, 200))
    try:
        s = setup({"url": receiver.url})
        s.send(_msg(hl7_samples, "LIMITED"))
        row = wait_until(lambda: s.settled("LIMITED"))
        first, second = s.attempts(row.id)
        assert first.error == "HTTP 429 Too Many Requests"
        # The backoff would be 50 ms; the receiver asked for a second.
        assert (second.started_at - first.started_at).total_seconds() >= 1.0
        assert row.status == "sent"
    finally:
        receiver.stop()


def test_a_slow_receiver_times_out_and_is_tried_again(setup, hl7_samples):
    calls = []

    async def answer(request: Received) -> int:
        calls.append(request)
        if len(calls) == 1:
            await asyncio.sleep(2.0)
        return 200

    receiver = HttpReceiver(answer)
    try:
        s = setup({"url": receiver.url, "timeout": "500ms"})
        s.send(_msg(hl7_samples, "SLOW"))
        row = wait_until(lambda: s.settled("SLOW"))
        tried = s.attempts(row.id)
        assert tried[0].outcome == "retrying"
        assert tried[0].error.startswith("ReadTimeout")
        assert (tried[-1].outcome, row.status) == ("sent", "sent")
    finally:
        receiver.stop()


def test_a_receiver_that_is_down_fails_after_the_retry_policy(setup, hl7_samples):
    (port,) = free_ports(1)
    s = setup({"url": f"http://127.0.0.1:{port}/fhir", "connect_timeout": "1s"})
    s.send(_msg(hl7_samples, "DOWN"))
    row = wait_until(lambda: s.settled("DOWN"))
    assert (row.status, row.attempts) == ("failed", 3)
    assert {a.error.split(":")[0] for a in s.attempts(row.id)} == {"ConnectError"}


def test_the_directory_gives_the_base_url(setup, hl7_samples):
    receiver = HttpReceiver()
    try:
        s = setup(
            {"path": "$process-message"},
            directory={"interaction": "results", "target": "MSH-6.1", "kind": "ods"},
        )
        with s.running.store.begin() as conn:
            put_endpoint(
                conn,
                make_endpoint(Key("ods", "R0A"), "results", "fhir", receiver.url + "/fhir/R4"),
                actor="test",
            )
        s.running.engine.gateway.directory.refresh()
        s.send(_msg(hl7_samples, "DIRECTED"))  # MSH-6 of the sample is R0A
        row = wait_until(lambda: s.settled("DIRECTED"))
        assert row.status == "sent"
        assert row.address == receiver.url + "/fhir/R4"
        assert [r.path for r in receiver.received] == ["/fhir/R4/$process-message"]
    finally:
        receiver.stop()


def test_mutual_tls_with_a_ca_path_and_a_client_certificate(setup, hl7_samples, certificates):
    receiver = HttpReceiver(tls=certificates.server_tls())
    try:
        trusted = setup(
            {
                "url": receiver.url,
                "tls": {
                    "ca": str(certificates.ca),
                    "cert": str(certificates.client_cert),
                    "key": str(certificates.client_key),
                },
            }
        )
        trusted.send(_msg(hl7_samples, "MTLS"))
        assert wait_until(lambda: trusted.settled("MTLS")).status == "sent"
        assert len(receiver.received) == 1
        trusted.stop()

        anonymous = setup({"url": receiver.url, "tls": {"ca": str(certificates.ca)}})
        anonymous.send(_msg(hl7_samples, "NO-CERT"))
        row = wait_until(lambda: anonymous.settled("NO-CERT"))
        assert row.status == "failed"
        assert len(receiver.received) == 1
        # TLS 1.3 refuses the missing certificate only at the first read, which looks like
        # a bare disconnect: the attempt says what is likely wrong.
        for attempt in anonymous.attempts(row.id):
            assert "may require a client certificate" in attempt.error, attempt.error
    finally:
        receiver.stop()
