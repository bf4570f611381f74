"""The MESH source and destination against NHS England's mesh-sandbox, through mesh-client."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest
from mesh_client import MeshClient
from mesh_testing import DPS, HUB, LAB, mailbox_config, mesh_env
from sqlalchemy import select
from tie_testing import RunningEngine, channel, engine_config, free_ports, wait_until

from router import metrics
from router.store.inbound import Inbound
from router.store.schema import attempts, deliveries, mesh_sent, messages

MIB = 1024 * 1024


def _config(tmp_path, store_url, sandbox, **mailbox_extra):
    return engine_config(
        tmp_path,
        store_url,
        blobs={"directory": str(tmp_path / "blobs")},
        mesh={"mailboxes": {"hub": mailbox_config(sandbox, **mailbox_extra)}},
    )


def _sender(to=DPS, **mesh):
    return channel(
        {
            "name": "to-dps",
            "source": {"channel": {}},
            "destinations": {
                "dps": {
                    "mesh": {
                        "mailbox": "hub",
                        "to": to,
                        "workflow_id": "TIE_TEST",
                        "filename": "{message_uuid}.dat",
                        "subject": "from {channel}",
                        **mesh,
                    },
                    "retry": {"max_attempts": 3, "backoff": ["50ms", "100ms"]},
                }
            },
        }
    )


def _receiver(out_dir, **poll):
    return channel(
        {
            "name": "hub-in",
            "source": {"mesh": {"mailbox": "hub", "interval": "200ms", **poll}},
            "destinations": {
                "out": {"file": {"directory": str(out_dir), "name": "{message_id}.dat"}}
            },
        }
    )


def _delivery(store):
    with store.read() as conn:
        return conn.execute(select(deliveries)).first()


def _submit(running, payload, content_type="text/plain"):
    running.engine.writer.submit_sync(Inbound("to-dps", payload, content_type=content_type))


@pytest.fixture(autouse=True)
def _secrets(monkeypatch):
    mesh_env(monkeypatch)


def test_a_delivery_is_sent_with_templated_headers(tmp_path, store_url, mesh_sandbox):
    running = RunningEngine(_config(tmp_path, store_url, mesh_sandbox), {"to-dps": _sender()})
    try:
        _submit(running, b"hello DPS")
        wait_until(lambda: (d := _delivery(running.store)) is not None and d.status == "sent")
        delivery = _delivery(running.store)
        with running.store.read() as conn:
            uuid = conn.scalar(select(messages.c.uuid))
            answer = json.loads(conn.scalar(select(attempts.c.response)))
            sent = conn.execute(select(mesh_sent)).one()
        assert (sent.mesh_message_id, sent.delivery_id, sent.recipient) == (
            answer["mesh_message_id"],
            delivery.id,
            DPS,
        )
        with mesh_sandbox.client(DPS) as dps:
            assert dps.list_messages() == [answer["mesh_message_id"]]
            received = dps.retrieve_message(answer["mesh_message_id"])
            assert received.read() == b"hello DPS"
            assert (received.sender, received.workflow_id, received.filename) == (
                HUB,
                "TIE_TEST",
                f"{uuid}.dat",
            )
            assert (received.subject, received.local_id) == ("from to-dps", uuid)
            assert received.content_type == "text/plain", "the payload's, not octet-stream"
    finally:
        running.stop()


def test_a_rotated_secret_is_used_from_the_next_send_on(
    tmp_path, store_url, mesh_sandbox, monkeypatch
):
    running = RunningEngine(_config(tmp_path, store_url, mesh_sandbox), {"to-dps": _sender()})
    try:
        states = {}
        for number, password in enumerate(("password", "rotated-wrong", "password"), start=1):
            monkeypatch.setenv("TIE_TEST_MESH_PASSWORD", password)
            _submit(running, f"message {number}".encode())
            states[number] = wait_until(lambda n=number: _settled(running.store, n))
        assert states[1][0] == "sent"
        assert states[2][0] == "failed", "the new (wrong) password was used"
        assert "Invalid Authentication Token" in states[2][1]
        assert states[3][0] == "sent", "and the next one again"
    finally:
        running.stop()


def _settled(store, number):
    """The (status, last_error) of the ``number``-th delivery once it is sent or failed."""
    with store.read() as conn:
        rows = conn.execute(select(deliveries).order_by(deliveries.c.id)).all()
    if len(rows) >= number and rows[number - 1].status in ("sent", "failed"):
        return rows[number - 1].status, rows[number - 1].last_error
    return None


def test_an_unregistered_recipient_fails_the_delivery_with_code_12(
    tmp_path, store_url, mesh_sandbox
):
    running = RunningEngine(
        _config(tmp_path, store_url, mesh_sandbox), {"to-dps": _sender(to="X26NOONE")}
    )
    try:
        _submit(running, b"to nobody")
        wait_until(lambda: (d := _delivery(running.store)) is not None and d.status == "failed")
        delivery = _delivery(running.store)
        assert delivery.attempts == 1, "a refusal is not retried"
        assert "code 12" in delivery.last_error
    finally:
        running.stop()


def test_a_transport_error_is_retried(tmp_path, store_url, mesh_sandbox):
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"
    config = engine_config(
        tmp_path,
        store_url,
        mesh={"mailboxes": {"hub": mailbox_config(mesh_sandbox, url=closed)}},
    )
    running = RunningEngine(config, {"to-dps": _sender()})
    try:
        _submit(running, b"nobody listens")
        wait_until(lambda: (d := _delivery(running.store)) is not None and d.status == "failed")
        delivery = _delivery(running.store)
        assert delivery.attempts == 3
        assert "MESH transport" in delivery.last_error
    finally:
        running.stop()


def test_a_large_payload_is_chunked_compressed_and_arrives_whole(tmp_path, store_url, mesh_sandbox):
    running = RunningEngine(
        _config(tmp_path, store_url, mesh_sandbox, max_chunk_size="1MiB"),
        {"to-dps": _sender(compress=True)},
    )
    try:
        data = os.urandom(3 * MIB) + b"tail"
        _submit(running, running.store.blobs.write([data]), "application/zip")
        wait_until(lambda: (d := _delivery(running.store)) is not None and d.status == "sent")
        mesh_id = json.loads(_attempt_response(running.store))["mesh_message_id"]
        with mesh_sandbox.client(DPS) as dps:
            received = dps.retrieve_message(mesh_id)
            assert received.mex_header("chunk-range") == "1:4"
            assert received.content_type == "application/zip", "chunked: in Mex-Content-Type"
            assert hashlib.sha256(received.read()).hexdigest() == hashlib.sha256(data).hexdigest()
    finally:
        running.stop()


def test_the_inbox_is_drained_page_by_page_and_stored_before_acknowledgement(
    tmp_path, store_url, mesh_sandbox
):
    with mesh_sandbox.client(LAB) as lab:
        sent = [
            lab.send_message(
                HUB,
                f"result {i}".encode(),
                workflow_id="LAB_RESULTS",
                filename=f"r{i}.txt",
                local_id=f"L{i}",
                subject="results",
            )
            for i in range(25)
        ]
    out = tmp_path / "out"
    running = RunningEngine(
        _config(tmp_path, store_url, mesh_sandbox), {"hub-in": _receiver(out, page_size=10)}
    )
    try:
        wait_until(lambda: len(list(out.glob("*.dat"))) == 25, timeout=30)
        wait_until(lambda: mesh_sandbox.inbox(HUB) == [])
        with running.store.read() as conn:
            rows = conn.execute(select(messages).order_by(messages.c.id)).all()
        assert sorted(r.control_id for r in rows) == sorted(sent)
        source = json.loads(rows[0].source)
        index = sent.index(rows[0].control_id)
        assert source == {
            "protocol": "mesh",
            "sender": LAB,
            "recipient": HUB,
            "workflow_id": "LAB_RESULTS",
            "filename": f"r{index}.txt",
            "local_id": f"L{index}",
            "subject": "results",
            "mesh_message_id": sent[index],
            "message_type": "DATA",
            "content_type": source["content_type"],
        }
        assert (rows[0].raw, rows[0].message_type) == (f"result {index}".encode(), "LAB_RESULTS")
    finally:
        running.stop()


def test_a_crash_between_commit_and_acknowledgement_stores_the_message_once(
    tmp_path, store_url, mesh_sandbox, monkeypatch
):
    with mesh_sandbox.client(LAB) as lab:
        mesh_id = lab.send_message(HUB, b"once only", workflow_id="LAB_RESULTS")
    real_ack = MeshClient.acknowledge_message
    failures = []

    def ack_fails_once(self, message_id):
        if not failures:
            failures.append(message_id)
            raise ConnectionError("engine died before acknowledging")
        return real_ack(self, message_id)

    monkeypatch.setattr(MeshClient, "acknowledge_message", ack_fails_once)
    out = tmp_path / "out"
    running = RunningEngine(_config(tmp_path, store_url, mesh_sandbox), {"hub-in": _receiver(out)})
    try:
        wait_until(lambda: failures and mesh_sandbox.inbox(HUB) == [])
        wait_until(lambda: _delivery(running.store) is not None)
        wait_until(lambda: _delivery(running.store).status == "sent")
        with running.store.read() as conn:
            assert conn.scalars(select(messages.c.control_id)).all() == [mesh_id]
            assert len(conn.execute(select(deliveries)).all()) == 1
        assert [p.read_bytes() for p in out.glob("*.dat")] == [b"once only"]
    finally:
        running.stop()


def test_a_large_inbound_file_is_streamed_into_the_blob_store(tmp_path, store_url, mesh_sandbox):
    data = os.urandom(3 * MIB)
    with mesh_sandbox.client(LAB, max_chunk_size=MIB) as lab:
        lab.send_message(HUB, data, workflow_id="LAB_RESULTS", filename="big.bin")
    out = tmp_path / "out"
    running = RunningEngine(_config(tmp_path, store_url, mesh_sandbox), {"hub-in": _receiver(out)})
    try:
        written = wait_until(lambda: list(out.glob("*.dat")))
        wait_until(lambda: _delivery(running.store) and _delivery(running.store).status == "sent")
        assert written[0].read_bytes() == data
        with running.store.read() as conn:
            row = conn.execute(select(messages)).one()
        assert (row.raw, row.size) == (b"", len(data))
        assert row.blob_sha256 == hashlib.sha256(data).hexdigest()
    finally:
        running.stop()


def test_a_non_delivery_report_fails_the_delivery_it_names(tmp_path, store_url, mesh_sandbox):
    out = tmp_path / "out"
    running = RunningEngine(
        _config(tmp_path, store_url, mesh_sandbox),
        {"to-dps": _sender(), "hub-in": _receiver(out)},
    )
    try:
        _submit(running, b"will not be collected")
        wait_until(lambda: (d := _delivery(running.store)) is not None and d.status == "sent")
        mesh_id = json.loads(_attempt_response(running.store))["mesh_message_id"]
        report_id = mesh_sandbox.report(HUB, mesh_id, "14", "Message not collected by recipient")
        wait_until(lambda: _delivery(running.store).status == "failed")
        delivery = _delivery(running.store)
        assert delivery.last_error == (
            "MESH non-delivery report 14: Message not collected by recipient"
        )
        with running.store.read() as conn:
            report = conn.execute(select(messages).where(messages.c.control_id == report_id)).one()
            outcomes = conn.scalars(select(attempts.c.outcome).order_by(attempts.c.id)).all()
        assert (report.channel, report.message_type, report.status) == (
            "to-dps",
            "REPORT",
            "filtered",
        )
        assert json.loads(report.raw)["linked_message_id"] == mesh_id
        assert outcomes == ["sent", "failed"]
        assert list(out.glob("*")) == [], "a report is not passed on as data"
        wait_until(lambda: mesh_sandbox.inbox(HUB) == [])
    finally:
        running.stop()


def test_the_handshake_runs_on_start(tmp_path, store_url, mesh_sandbox):
    running = RunningEngine(
        _config(tmp_path, store_url, mesh_sandbox), {"hub-in": _receiver(tmp_path / "out")}
    )
    try:
        poller = running.engine.mesh.pollers[0]
        wait_until(lambda: poller.last_handshake is True)
    finally:
        running.stop()


def _attempt_response(store):
    with store.read() as conn:
        return conn.scalar(select(attempts.c.response).order_by(attempts.c.id).limit(1))


def test_a_mailbox_that_cannot_be_polled_is_counted_and_logged_once_with_its_traceback(
    tmp_path, store_url, mesh_sandbox, caplog
):
    """A poll every 200 ms against a MESH address that refuses connections: every failure
    is counted for /metrics, and the log has the first with its traceback, then one short
    line, not a traceback a poll."""
    (closed,) = free_ports(1)
    config = _config(tmp_path, store_url, mesh_sandbox, url=f"https://127.0.0.1:{closed}")
    failures = metrics.MESH_POLL_FAILURES.labels(HUB)
    before = failures._value.get()
    with caplog.at_level(logging.INFO, logger="router.connectors.mesh.poller"):
        running = RunningEngine(config, {"hub-in": _receiver(tmp_path / "out")})
        try:
            wait_until(lambda: failures._value.get() - before >= 6, timeout=30)
        finally:
            running.stop()
    polls = [
        (r.levelname, r.getMessage(), r.exc_info is not None)
        for r in caplog.records
        if r.name == "router.connectors.mesh.poller" and r.getMessage().startswith("MESH poll")
    ]
    assert polls[0] == (
        "ERROR",
        f"MESH poll of mailbox {HUB} failed; next poll retries (further failures are counted "
        "until a poll works)",
        True,
    )
    assert [(level, line.split(": ")[0], trace) for level, line, trace in polls[1:]] == [
        ("WARNING", f"MESH poll of mailbox {HUB} failed again (2 in a row)", False)
    ]
