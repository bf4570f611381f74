"""A FHIR body above the blob threshold is written to the blob store by the store's writer,
off the event loop, before the row that names it is committed and the 2xx sent; a message
left validating is checked again from its blob (an error when its blob is missing). A BaRS
message, which is stored without the writer, is kept as one blob its message and its
delivery both name."""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any
from uuid import uuid4

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
    serving,
    wait_until,
)

from router.directory import Key, make_endpoint
from router.payload import Payload
from router.store.inbound import VALIDATING, Inbound, utcnow, write_inbound
from router.store.schema import deliveries, messages

FHIR = {"Content-Type": "application/fhir+json"}
PATH = "/fhir/inbox/$process-message"
BLOCKED = 10.0  # seconds at most that the blob write is held (a bound on failure only)
THRESHOLD = "32KB"
BARS_TARGET = Key("dos", "111111111")  # the samples' destination


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    answer = (200, b"{}", {"Content-Type": "application/fhir+json"})
    with serving(HttpReceiver(lambda r: answer)) as rx:
        yield rx


@pytest.fixture
def engine(
    tmp_path: Path, store_url: str, receiver: HttpReceiver
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    inbox = channel(
        {
            "name": "inbox",
            "source": {"http": {}},
            "destinations": {"rx": {"http": {"url": receiver.url, "path": "$process-message"}}},
        }
    )
    settings = engine_config(tmp_path, store_url, blobs={"threshold": THRESHOLD})
    with engine_over_http(settings, {"inbox": inbox}) as tie:
        as_sender(tie[0].store, tie[1])
        yield tie


@pytest.fixture
def bars_engine(
    tmp_path: Path, store_url: str, receiver: HttpReceiver
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    bars = channel({"name": "bars", "source": {"http": {"bars": {"timeout": "5s"}}}})
    url = receiver.url + "/fhir/R4"
    endpoints = [make_endpoint(BARS_TARGET, "servicerequest-request", "fhir", url)]
    settings = engine_config(tmp_path, store_url, blobs={"threshold": THRESHOLD})
    with engine_over_http(settings, {"bars": bars}, endpoints=endpoints) as tie:
        as_sender(tie[0].store, tie[1])
        yield tie


def _with_letter(document: dict[str, Any], size: int) -> dict[str, Any]:
    """``document`` with a new id and a Binary (a "PDF" of ``size`` bytes) added."""
    document = copy.deepcopy(document)
    document["id"] = str(uuid4())
    pdf = base64.b64encode(b"%PDF-1.4 " + b"x" * size).decode()
    binary = {"resourceType": "Binary", "contentType": "application/pdf", "data": pdf}
    document["entry"].append({"fullUrl": f"urn:uuid:{uuid4()}", "resource": binary})
    return document


def _row(running: RunningEngine, control_id: str) -> Any:
    with running.store.read() as conn:
        return conn.execute(select(messages).where(messages.c.control_id == control_id)).first()


def test_a_large_bundle_is_a_blob_written_off_the_loop_before_its_202(
    engine, receiver, bars_samples
):
    running, client = engine
    sample = bars_samples["servicerequest-request_validation"]
    large = _with_letter(sample, 64 * 1024)
    body = json.dumps(large).encode()
    blobs = running.store.blobs
    put, writing, go_on = blobs.put, threading.Event(), threading.Event()

    def held_put(data: bytes | Payload) -> Payload:
        writing.set()
        go_on.wait(BLOCKED)
        return put(data)

    blobs.put = held_put
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(client.post, PATH, content=body, headers=FHIR)
        try:
            assert writing.wait(BLOCKED), "the large body was not written to the blob store"
            # While its blob is being written, the loop answers another sender, and the
            # large message is neither committed nor acknowledged.
            small = copy.deepcopy(sample) | {"id": str(uuid4())}
            headers = {**FHIR, "Authorization": client.headers["Authorization"]}
            with httpx.Client(base_url=client.base_url, timeout=BLOCKED / 2) as other:
                assert other.post(PATH, json=small, headers=headers).status_code == 202
            assert not sent.done()
            assert _row(running, large["id"]) is None
        finally:
            go_on.set()
        assert sent.result(BLOCKED).status_code == 202

    row = _row(running, large["id"])
    assert (row.raw, row.size, row.blob_sha256) == (b"", len(body), sha256(body).hexdigest())
    assert blobs.path(row.blob_sha256).read_bytes() == body
    wait_until(lambda: {r.json()["id"] for r in receiver.received} == {small["id"], large["id"]})
    wait_until(lambda: _row(running, large["id"]).status == "processed")


def test_a_large_message_left_validating_is_checked_again_from_its_blob(
    engine, receiver, bars_samples
):
    running, _ = engine
    document = _with_letter(bars_samples["servicerequest-request_validation"], 64 * 1024)
    item = Inbound(
        "inbox",
        running.store.blobs.put(json.dumps(document).encode()),
        content_type="fhir+json",
        source={"protocol": "http", "path": "/fhir/inbox/$process-message"},
        status=VALIDATING,
        received_at=utcnow() - timedelta(minutes=5),
    )
    assert isinstance(item.raw, Payload) and item.raw.is_blob
    with running.store.begin() as conn:
        write_inbound(conn, [item])

    assert running.call(running.engine.gateway.recover_validating()) == 1
    wait_until(lambda: len(receiver.received) == 1)
    assert receiver.received[0].json()["id"] == document["id"]
    with running.store.read() as conn:
        status = conn.scalar(select(messages.c.status).where(messages.c.uuid == item.uuid))
    assert status == "processed"


def test_a_large_bars_message_and_its_delivery_name_one_blob(bars_engine, receiver, bars_samples):
    running, client = bars_engine
    large = _with_letter(bars_samples["servicerequest-request_validation"], 64 * 1024)
    body = json.dumps(large).encode()
    answer = client.post("/fhir/bars/$process-message", content=body, headers=FHIR)

    assert answer.status_code == 200
    assert receiver.received[0].body == body
    digest = sha256(body).hexdigest()
    row = _row(running, large["id"])
    assert (row.raw, row.size, row.blob_sha256) == (b"", len(body), digest)
    with running.store.read() as conn:
        delivery = conn.execute(select(deliveries).where(deliveries.c.message_id == row.id)).one()
    assert (delivery.payload, delivery.blob_sha256, delivery.blob_size) == (b"", digest, len(body))
    assert running.store.blobs.path(digest).read_bytes() == body


def test_a_message_left_validating_whose_blob_is_missing_becomes_an_error(
    engine, receiver, bars_samples
):
    running, _ = engine
    sample = bars_samples["servicerequest-request_validation"]
    lost, kept = (_with_letter(sample, 64 * 1024) for _ in range(2))
    items = [
        Inbound(
            "inbox",
            running.store.blobs.put(json.dumps(document).encode()),
            content_type="fhir+json",
            source={"protocol": "http", "path": "/fhir/inbox/$process-message"},
            status=VALIDATING,
            received_at=utcnow() - timedelta(minutes=5),
        )
        for document in (lost, kept)
    ]
    with running.store.begin() as conn:
        write_inbound(conn, items)
    missing = items[0].raw
    assert isinstance(missing, Payload) and missing.path is not None
    missing.path.unlink()

    assert running.call(running.engine.gateway.recover_validating()) == 2
    with running.store.read() as conn:
        row = conn.execute(select(messages).where(messages.c.uuid == items[0].uuid)).one()
    assert row.status == "error"
    assert f"blob {missing.sha256}) is missing from the blob store" in row.error
    wait_until(lambda: len(receiver.received) == 1)
    assert [r.json()["id"] for r in receiver.received] == [kept["id"]]
