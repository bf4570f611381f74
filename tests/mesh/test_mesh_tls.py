"""A mailbox over mutual TLS: tie verifies the MESH server against the configured CA and
authenticates with its client certificate, as live MESH requires."""

from __future__ import annotations

import json

import pytest
from mesh_testing import DPS, Certificates, MeshSandbox, mailbox_config, mesh_env
from sqlalchemy import select
from tie_testing import RunningEngine, channel, engine_config, wait_until

from router.store.inbound import Inbound
from router.store.schema import attempts, deliveries


@pytest.fixture(scope="module")
def tls_sandbox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mesh-tls")
    certificates = Certificates(folder / "certs")
    sandbox = MeshSandbox(folder, tls=certificates)
    yield sandbox
    sandbox.stop()


def _engine(tmp_path, sandbox, **tls):
    mailbox = mailbox_config(sandbox, **tls)
    feed = channel(
        {
            "name": "to-dps",
            "source": {"channel": {}},
            "destinations": {
                "dps": {
                    "mesh": {"mailbox": "hub", "to": DPS, "workflow_id": "TIE_TLS"},
                    "retry": {"max_attempts": 2, "backoff": ["50ms", "50ms"]},
                }
            },
        }
    )
    config = engine_config(
        tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", mesh={"mailboxes": {"hub": mailbox}}
    )
    running = RunningEngine(config, {"to-dps": feed})
    running.engine.writer.submit_sync(Inbound("to-dps", b"over TLS", content_type="text/plain"))
    return running


def _settled(store):
    with store.read() as conn:
        row = conn.execute(select(deliveries)).first()
    return row if row is not None and row.status in ("sent", "failed") else None


def test_a_message_is_sent_over_mutual_tls(tmp_path, tls_sandbox, monkeypatch):
    mesh_env(monkeypatch)
    certs = tls_sandbox.tls
    running = _engine(
        tmp_path, tls_sandbox, ca=str(certs.ca), cert=str(certs.client), key=str(certs.client_key)
    )
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert delivery.status == "sent", delivery.last_error
        with running.store.read() as conn:
            mesh_id = json.loads(conn.scalar(select(attempts.c.response)))["mesh_message_id"]
        with tls_sandbox.client(
            DPS, verify=str(certs.ca), cert=(str(certs.client), str(certs.client_key))
        ) as dps:
            assert dps.retrieve_message(mesh_id).read() == b"over TLS"
    finally:
        running.stop()


def test_without_the_client_certificate_the_server_refuses(tmp_path, tls_sandbox, monkeypatch):
    mesh_env(monkeypatch)
    running = _engine(tmp_path, tls_sandbox, ca=str(tls_sandbox.tls.ca))
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert delivery.status == "failed"
        assert "MESH transport" in delivery.last_error
    finally:
        running.stop()


def test_a_server_not_signed_by_the_configured_ca_is_refused(tmp_path, tls_sandbox, monkeypatch):
    mesh_env(monkeypatch)
    other = Certificates(tmp_path / "other")
    certs = tls_sandbox.tls
    running = _engine(
        tmp_path, tls_sandbox, ca=str(other.ca), cert=str(certs.client), key=str(certs.client_key)
    )
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert delivery.status == "failed"
        assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_error
    finally:
        running.stop()
