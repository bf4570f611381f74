"""The HTTP API over a real socket: health, authentication, search and an audited detail view."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import RunningEngine, api_token, channel, engine_config, wait_until

from router.api.app import HEALTH_TIMEOUT
from router.store.inbound import Inbound
from router.store.queries import PREVIEW
from router.store.schema import audit_events, messages

TOKEN = "tie_s3cret-operator-token"
HEALTHY = {
    "store": True,
    "listeners": True,
    "writer": True,
    "processor": True,
    "dispatcher": True,
    "degraded": False,
    "channels": {
        "orders": {
            "state": "running",
            "revision": None,  # an open channel's (no revision recorded in this test)
            "deployed": None,
            "fallback": False,
            "restartable": True,
        }
    },
}


@pytest.fixture
def api(tmp_path, store_url, monkeypatch) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    yield from _serving(tmp_path, store_url, destinations={})


@pytest.fixture
def sending(tmp_path, store_url) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    """The same engine, with a destination (a directory) for a dispatch worker to serve."""
    out = {"file": {"directory": str(tmp_path / "out"), "name": "{message_id}"}}
    yield from _serving(tmp_path, store_url, destinations={"out": out})


def _serving(
    tmp_path, store_url: str, destinations: dict
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    api_token(store_url, token=TOKEN)
    orders = channel(
        {"name": "orders", "source": {"mllp": {"port": 0}}, "destinations": destinations}
    )
    running = RunningEngine(engine_config(tmp_path, store_url), {"orders": orders}, http=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}", timeout=10)
    try:
        yield running, client
    finally:
        client.close()
        running.stop()


def _send(running: RunningEngine, raw: bytes) -> None:
    with MLLPClient("127.0.0.1", running.port("orders")) as mllp:
        mllp.send_message(raw)


def test_health_is_open_and_reports_store_and_listeners(api):
    _, client = api
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", **HEALTHY}


def test_health_reports_a_store_that_answers_but_cannot_commit(api):
    """Disk full or a read-only store file: SELECT 1 works, every sender gets AE."""
    running, client = api
    running.engine.writer.failing = True  # what a failed group commit leaves
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", **HEALTHY, "store": False}


def test_health_says_a_store_that_does_not_answer_is_down_before_a_probe_gives_up(api, monkeypatch):
    """PostgreSQL unreachable with its packets dropped: a connection attempt waits for
    minutes, and a probe that timed out said nothing about why."""
    running, client = api
    answered = threading.Event()

    @contextlib.contextmanager
    def unanswered() -> Iterator[None]:
        answered.wait(30)  # as long as a connection to a silent host
        yield

    monkeypatch.setattr(running.engine.store, "read", unanswered)
    try:
        started = time.monotonic()
        response = client.get("/health", timeout=HEALTH_TIMEOUT + 5)
        waited = time.monotonic() - started
    finally:
        answered.set()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", **HEALTHY, "store": False}
    assert waited < HEALTH_TIMEOUT + 1


class _Killed(BaseException):
    """What no ``except Exception`` catches: it ends the thread or task it is raised in."""


def _down(client: httpx.Client) -> dict:
    """/health's body once it answers 503."""
    response = wait_until(lambda: (r := client.get("/health")).status_code == 503 and r)
    return response.json()


def test_health_reports_a_dead_processor(api, monkeypatch, caplog):
    """Messages are still acknowledged without it, but never processed."""
    running, client = api
    processor = running.engine.processor

    def killed() -> int:
        raise _Killed

    monkeypatch.setattr(processor, "run_once", killed)
    processor.wake()
    assert _down(client) == {"status": "unavailable", **HEALTHY, "processor": False}
    assert "the processor stopped" in caplog.text
    assert "_Killed" in caplog.text, "the traceback is logged"


def test_health_reports_a_dead_dispatch_worker(sending, monkeypatch, caplog):
    """Its destination is sent nothing more, while the processor queues deliveries for it."""
    running, client = sending
    dispatcher = running.engine.dispatcher
    worker = dispatcher.workers["orders", "out"]

    async def killed(*args: object, **kwargs: object) -> None:
        raise _Killed

    assert client.get("/health").json() == {"status": "ok", **HEALTHY}
    monkeypatch.setattr(worker, "_round", killed)
    dispatcher.notify({("orders", "out")})
    assert _down(client) == {"status": "unavailable", **HEALTHY, "dispatcher": False}
    assert "the dispatch worker for orders/out stopped (_Killed)" in caplog.text


def test_health_reports_a_dead_group_commit_writer(api, monkeypatch, caplog):
    """Nothing more is stored, and every sender waits for an answer that never comes."""
    running, client = api
    writer = running.engine.writer

    def killed(*args: object) -> bool:
        raise _Killed

    monkeypatch.setattr(writer, "_commit", killed)
    writer.run_soon(lambda conn: None)
    assert _down(client) == {"status": "unavailable", **HEALTHY, "writer": False}
    assert "the group-commit writer stopped" in caplog.text


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
)
def test_api_refuses_requests_without_the_token(api, headers):
    _, client = api
    for path in ("/api/messages", "/api/messages/1"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"


def test_search_and_detail_with_an_audited_view(api, hl7_samples):
    running, client = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _send(running, hl7_samples["OML_O21_nhs_nwgmsa_v251"])
    _send(running, hl7_samples["ORU_R01_nhs_nwgmsa_v251"])

    def processed() -> list[dict]:
        rows = client.get("/api/messages", headers=auth, params={"status": "processed"}).json()
        return rows["messages"] if len(rows["messages"]) == 2 else []

    rows = wait_until(processed)
    assert [r["message_type"] for r in rows] == ["ORU^R01", "OML^O21"]

    page = client.get(
        "/api/messages", headers=auth, params={"limit": 1, "since": "2000-01-01T00:00:00"}
    ).json()
    assert [r["message_type"] for r in page["messages"]] == ["ORU^R01"]
    rest = client.get("/api/messages", headers=auth, params={"before": page["next"]}).json()
    assert [r["message_type"] for r in rest["messages"]] == ["OML^O21"]

    oml = rows[1]
    detail = client.get(f"/api/messages/urn:tie:message:{oml['uuid']}", headers=auth)
    assert detail.status_code == 200
    body = detail.json()
    assert body["raw"].startswith("MSH|^~\\&|EPIC|R0A|iGene")
    assert {"key": "control_id", "value": oml["control_id"]} in body["correlations"]
    with running.store.read() as conn:
        views = conn.execute(
            select(audit_events.c.actor, audit_events.c.target).where(
                audit_events.c.action == "view"
            )
        ).all()
        assert conn.scalar(select(messages.c.uuid).where(messages.c.id == oml["id"]))
    assert views == [("operator", f"urn:tie:message:{oml['uuid']}")]

    assert client.get("/api/messages/999999", headers=auth).status_code == 404


def _raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` and ``body`` (not necessarily all the body announced); read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_an_oversized_body_is_refused_before_it_is_read(api):
    running, client = api
    announced = (
        b"POST /api/revisions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    answer = _raw_request(running.http_port, announced, b'{"channel": ')
    assert answer.startswith(b"HTTP/1.1 413"), "answered without waiting for the gigabyte"

    chunked = b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    megabyte = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    assert _raw_request(running.http_port, chunked, megabyte * 3).startswith(b"HTTP/1.1 413")

    small = client.post("/api/revisions", json={"channel": "x", "yaml": "y" * 1_000_000})
    assert small.status_code == 401, "a body within the limit reaches the route"


def test_an_oversized_body_still_being_sent_gets_its_whole_413(api):
    """The 413 goes out before the body is read; the server then lingers, discarding what
    the client still sends, so its close is no reset that destroys the answer unread."""
    running, _ = api
    size = 3 * 1024 * 1024
    head = (
        b"POST /api/revisions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    for _ in range(3):  # without the linger, each try loses its answer most of the time
        with socket.create_connection(("127.0.0.1", running.http_port), timeout=10) as conn:
            sender = threading.Thread(target=conn.sendall, args=(head + b"x" * size,))
            sender.start()
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            sender.join()
        assert answer.startswith(b"HTTP/1.1 413")
        assert answer.endswith(b'bytes"}'), answer


HUGE = "9" * 25  # past any database integer


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", f"/api/messages?before={HUGE}", 422),
        ("GET", "/api/messages?before=-5", 422),
        ("GET", f"/api/messages/{HUGE}", 404),
        ("GET", "/api/messages/%C2%B2", 404),  # "²": str.isdigit() but not int()
        ("POST", f"/api/messages/{HUGE}/reprocess", 404),
        ("POST", "/api/messages/%C2%B2/reprocess", 404),
        ("POST", f"/api/deliveries/{HUGE}/resend", 422),
        ("POST", "/api/deliveries/resend", 422),  # ids: [HUGE] in the body
        ("GET", f"/api/endpoints/{HUGE}", 422),
        ("DELETE", f"/api/endpoints/{HUGE}", 422),
        ("GET", f"/api/audit?before={HUGE}", 422),
        ("GET", f"/api/holds/{HUGE}", 422),
        ("POST", f"/api/holds/{HUGE}/approve", 422),
        ("GET", "/api/revisions/orders/9999999999", 422),  # past a revision number's column
        ("GET", "/api/revisions/orders/diff?number=9999999999", 422),
        ("DELETE", f"/api/users/tokens/{HUGE}", 422),
        ("GET", "/api/messages?until=0001-01-01T00:00:00&text=x", 200),  # until - 24 h
    ],
)
def test_out_of_range_numbers_are_the_callers_mistake_not_a_500(api, method, path, code):
    _, client = api
    body = {"reason": "x", "dry_run": True} if method == "POST" else None
    if path == "/api/deliveries/resend":
        body = {"reason": "x", "ids": [int(HUGE)]}
    answer = client.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (answer.status_code, answer.headers["content-type"]) == (code, "application/json")


def test_an_unexpected_error_is_a_json_500_without_the_traceback(api, monkeypatch):
    _, client = api

    def broken(*_: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("router.api.messages.search", broken)
    answer = client.get("/api/messages", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error: see the engine's log"}


def test_the_type_filter_takes_percent_and_underscore_literally(api, hl7_samples):
    running, client = api
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _send(running, hl7_samples["OML_O21_nhs_nwgmsa_v251"])
    _send(running, hl7_samples["ORU_R01_nhs_nwgmsa_v251"])

    def types(kind: str) -> list[str]:
        found = client.get("/api/messages", headers=auth, params={"type": kind}).json()
        return [m["message_type"] for m in found["messages"]]

    assert wait_until(lambda: types("OML") == ["OML^O21"])
    assert types("ORU^R01") == ["ORU^R01"]
    assert types("%") == [] and types("O_L") == [] and types("_") == []


def _audited_views(running: RunningEngine) -> list[dict]:
    with running.store.read() as conn:
        rows = conn.scalars(
            select(audit_events.c.details)
            .where(audit_events.c.action == "view")
            .order_by(audit_events.c.id)
        )
        return [json.loads(details) for details in rows]


def test_the_whole_of_a_large_message_and_payload_downloads_as_an_audited_attachment(sending):
    running, client = sending
    auth = {"Authorization": f"Bearer {TOKEN}"}
    big = (
        b"MSH|^~\\&|EPR|R0A|LAB|R0A|20240101120000||OML^O21|BIG-1|P|2.5.1\r"
        + b"NTE|1||"
        + os.urandom(3 * PREVIEW).hex().encode()
        + b"|END"
    )
    _send(running, big)
    rows = wait_until(
        lambda: client.get("/api/messages", headers=auth, params={"status": "processed"}).json()[
            "messages"
        ]
    )
    detail = client.get(f"/api/messages/{rows[0]['id']}", headers=auth).json()
    assert detail["raw_truncated"] and len(detail["raw"]) == PREVIEW
    [delivery] = detail["deliveries"]

    whole = client.get(f"/api/messages/{rows[0]['id']}/raw", headers=auth)
    payload = client.get(f"/api/deliveries/{delivery['id']}/payload", headers=auth)

    assert whole.status_code == payload.status_code == 200
    assert whole.content == payload.content == big
    assert whole.headers["content-type"] == "application/octet-stream"
    assert whole.headers["content-disposition"] == (
        f'attachment; filename="message-{rows[0]["id"]}.hl7"'
    )
    assert _audited_views(running)[1:] == [
        {"via": "api", "whole": True},
        {"via": "api", "whole": True, "delivery": delivery["id"]},
    ]
    assert client.get("/api/messages/999999/raw", headers=auth).status_code == 404
    assert client.get("/api/deliveries/999999/payload", headers=auth).status_code == 404


def test_a_blob_message_downloads_whole_from_its_file(api):
    running, client = api
    data = os.urandom(3 * 1024 * 1024)  # above the blob store's 1 MiB threshold
    payload = running.store.blobs.write([data[: len(data) // 2], data[len(data) // 2 :]])
    running.engine.writer.submit_sync(
        Inbound("orders", payload, content_type="application/octet-stream")
    )
    with running.store.read() as conn:
        message_id = conn.scalar(select(messages.c.id))

    answer = client.get(
        f"/api/messages/{message_id}/raw", headers={"Authorization": f"Bearer {TOKEN}"}
    )

    assert answer.status_code == 200 and answer.content == data
    assert answer.headers["content-disposition"].endswith(f'"message-{message_id}.bin"')
