"""MLLP over TLS: the source against python-hl7's asyncio client, the destination against
python-hl7's MLLP server, each with certificates made for the test (tie_testing's CA).

What is proven: messages travel and are acknowledged after the commit as over plain TCP;
mutual TLS refuses a client without a certificate or with one from another CA; a sender
that does not trust the receiver's certificate retries with the reason on the attempt; and
a failed handshake is one log line, counted, while the listener serves on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pytest
from sqlalchemy import select
from tie_testing import (
    Certificates,
    Hl7Receiver,
    Revocations,
    RunningEngine,
    channel,
    engine_config,
    hl7_message,
    make_certificates,
    make_revocations,
    wait_until,
)

from router import metrics
from router.cli.commands import _print_detail
from router.cli.output import CommandError
from router.cli.sending import send_files
from router.connectors.mllp.listener import MllpListener
from router.store.inbound import Receipt
from router.store.queries import MessageFilter, message_detail, search
from router.store.schema import attempts, deliveries, messages

GHH = "ORU_R01_v24_python-hl7_GHH"
LISTENER_LOG = "router.connectors.mllp.listener"
GUARD = 30.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def strangers(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Certificates from another CA, which neither side trusts."""
    return make_certificates(tmp_path_factory.mktemp("other-ca"))


def tls_source(certs: Certificates, **extra: Any) -> dict[str, Any]:
    return {"cert": str(certs.server_cert), "key": str(certs.server_key), **extra}


def start_engine(tmp_path: Path, store_url: str, source_tls: dict[str, Any]) -> RunningEngine:
    inbound = channel(
        {
            "name": "inbound",
            "source": {"mllp": {"port": 0, "tls": source_tls}},
            "destinations": {},
        }
    )
    return RunningEngine(engine_config(tmp_path, store_url), {"inbound": inbound})


def client_context(certs: Certificates, identity: Certificates | None = None) -> ssl.SSLContext:
    """A sender that trusts ``certs``' CA and presents ``identity``'s client certificate."""
    context = ssl.create_default_context(cafile=str(certs.ca))
    if identity is not None:
        context.load_cert_chain(identity.client_cert, identity.client_key)
    return context


async def send_over_tls(port: int, message: bytes, context: ssl.SSLContext) -> hl7.Message:
    """python-hl7's asyncio client, which hands ``ssl`` to asyncio's open_connection."""
    reader, writer = await hl7.mllp.open_hl7_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        writer.writemessage(hl7.parse(message.decode()))
        await writer.drain()
        async with asyncio.timeout(GUARD):
            return await reader.readmessage()
    finally:
        writer.close()


async def send_raw_over_tls(port: int, data: bytes, context: ssl.SSLContext) -> bytes:
    """One frame of any bytes (python-hl7's client sends only what parses), its answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        writer.write(b"\x0b" + data + b"\x1c\r")
        async with asyncio.timeout(GUARD):
            return await reader.readuntil(b"\x1c\r")
    finally:
        writer.close()


def send(port: int, message: bytes, context: ssl.SSLContext) -> hl7.Message:
    return asyncio.run(send_over_tls(port, message, context))


def stored_status(running: RunningEngine, control_id: str) -> list[str]:
    with running.store.read() as conn:
        query = select(messages.c.status).where(messages.c.control_id == control_id)
        return list(conn.execute(query).scalars())


def failed_handshakes(name: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "tie_mllp_tls_handshake_failures_total", {"channel": name}
    )
    return value or 0.0


@pytest.fixture
def tls_engine(tmp_path: Any, store_url: str, certs: Certificates) -> Iterator[RunningEngine]:
    running = start_engine(tmp_path, store_url, tls_source(certs))
    yield running
    running.stop()


@pytest.fixture
def mutual_engine(tmp_path: Any, store_url: str, certs: Certificates) -> Iterator[RunningEngine]:
    source = tls_source(certs, client_ca=str(certs.ca), require_client_cert=True)
    running = start_engine(tmp_path, store_url, source)
    yield running
    running.stop()


# --- the source ----------------------------------------------------------------------------


def test_a_message_over_tls_is_acknowledged_after_its_commit(tls_engine, certs, hl7_samples):
    ack = send(
        tls_engine.port("inbound"), hl7_message(hl7_samples[GHH], "TLS-1"), client_context(certs)
    )
    assert str(ack.segment("MSA")[1]) == "AA"
    assert str(ack.segment("MSA")[2]) == "TLS-1"
    assert stored_status(tls_engine, "TLS-1")  # committed before the ACK was sent
    with tls_engine.store.read() as conn:
        query = select(messages.c.source).where(messages.c.control_id == "TLS-1")
        source = json.loads(conn.scalar(query))
    assert (source["tls"], "client_subject" in source) == ("TLSv1.3", False)  # no client cert


def test_a_plain_tcp_sender_fails_the_handshake_and_the_listener_serves_on(
    tls_engine, certs, hl7_samples, caplog
):
    port = tls_engine.port("inbound")
    before = failed_handshakes("inbound")
    with caplog.at_level(logging.WARNING, logger=LISTENER_LOG):
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as plain:
            plain.sendall(b"\x0b" + hl7_message(hl7_samples[GHH], "PLAIN-1") + b"\x1c\r")
            host, local_port = plain.getsockname()[:2]
            assert plain.recv(4096) == b""  # closed, nothing acknowledged
        wait_until(lambda: failed_handshakes("inbound") == before + 1)
    lines = [r for r in caplog.records if r.name == LISTENER_LOG and "handshake" in r.getMessage()]
    assert len(lines) == 1
    assert f"{host}:{local_port}" in lines[0].getMessage()
    assert lines[0].exc_info is None  # one line, not a traceback
    assert stored_status(tls_engine, "PLAIN-1") == []
    ack = send(port, hl7_message(hl7_samples[GHH], "TLS-2"), client_context(certs))
    assert str(ack.segment("MSA")[1]) == "AA"


def test_a_sender_failing_the_handshake_in_a_loop_is_counted_each_time_and_logged_once(
    tls_engine, hl7_samples, caplog
):
    """A misconfigured sender retrying plain TCP in a tight loop: one line, every failure
    counted."""
    port = tls_engine.port("inbound")
    before = failed_handshakes("inbound")
    with caplog.at_level(logging.WARNING, logger=LISTENER_LOG):
        for number in range(5):
            with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as plain:
                plain.sendall(b"\x0b" + hl7_message(hl7_samples[GHH], f"LOOP-{number}") + b"\x1c\r")
                assert plain.recv(4096) == b""
            wait_until(lambda n=number: failed_handshakes("inbound") == before + n + 1)
    lines = [r for r in caplog.records if r.name == LISTENER_LOG and "handshake" in r.getMessage()]
    assert len(lines) == 1


def test_a_port_probe_is_no_handshake_failure(tls_engine, certs, hl7_samples, caplog):
    """A load balancer's health check connects and hangs up, every few seconds."""
    port = tls_engine.port("inbound")
    listener = tls_engine.engine.listeners[0]
    before = failed_handshakes("inbound")
    with caplog.at_level(logging.INFO, logger=LISTENER_LOG):
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as probe:
            host, local_port = probe.getsockname()[:2]
        wait_until(
            lambda: any("before the TLS handshake" in r.getMessage() for r in caplog.records)
        )
    [line] = [r for r in caplog.records if "TLS handshake" in r.getMessage()]
    assert (line.levelname, f"{host}:{local_port}" in line.getMessage()) == ("INFO", True)
    assert failed_handshakes("inbound") == before
    wait_until(lambda: not listener._connections)  # its place is free for another sender
    ack = send(port, hl7_message(hl7_samples[GHH], "TLS-3"), client_context(certs))
    assert str(ack.segment("MSA")[1]) == "AA"


def test_a_silent_peer_is_cut_off_and_handshakes_under_way_are_limited(
    tmp_path, store_url, certs, hl7_samples, caplog
):
    """A peer that connects and says nothing holds a handshake open for idle_timeout at
    most, and no more than max_connections such peers are held at once."""
    source = {"port": 0, "idle_timeout": "1s", "max_connections": 1, "tls": tls_source(certs)}
    inbound = channel({"name": "inbound", "source": {"mllp": source}})
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbound": inbound})
    try:
        port = running.port("inbound")
        before = failed_handshakes("inbound")
        with caplog.at_level(logging.WARNING):
            silent = socket.create_connection(("127.0.0.1", port), timeout=GUARD)
            wait_until(lambda: running.engine.listeners[0]._server._handshakes)
            with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as second:
                assert second.recv(1) == b""  # closed at once: one handshake is under way
            assert silent.recv(1) == b""  # then the silent one runs out of time
            silent.close()
            wait_until(lambda: failed_handshakes("inbound") == before + 1)
        messages = [r.getMessage() for r in caplog.records]
        assert "1 TLS handshakes under way; refusing one" in messages
        assert any(m.endswith("failed: no TLS handshake in time") for m in messages)
        ack = send(port, hl7_message(hl7_samples[GHH], "AFTER-1"), client_context(certs))
        assert str(ack.segment("MSA")[1]) == "AA"
    finally:
        running.stop()


def test_renewed_certificate_files_are_presented_from_the_next_connection(
    tmp_path, store_url, certs, strangers, hl7_samples, caplog
):
    """Certificates are renewed in place; no restart or reload is needed to present them."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(certs.server_cert.read_bytes())
    key.write_bytes(certs.server_key.read_bytes())
    running = start_engine(tmp_path, store_url, {"cert": str(cert), "key": str(key)})
    try:
        port = running.port("inbound")
        assert (
            str(
                send(port, hl7_message(hl7_samples[GHH], "OLD-1"), client_context(certs)).segment(
                    "MSA"
                )[1]
            )
            == "AA"
        )
        cert.write_bytes(strangers.server_cert.read_bytes())
        key.write_bytes(strangers.server_key.read_bytes())
        ack = send(port, hl7_message(hl7_samples[GHH], "NEW-1"), client_context(strangers))
        assert str(ack.segment("MSA")[1]) == "AA"
        with pytest.raises(ssl.SSLCertVerificationError):
            send(port, hl7_message(hl7_samples[GHH], "OLD-2"), client_context(certs))
        with caplog.at_level(logging.WARNING, logger="router.connectors.mllp.tls"):
            key.write_bytes(certs.server_key.read_bytes())  # half a renewal: the key first
            ack = send(port, hl7_message(hl7_samples[GHH], "NEW-2"), client_context(strangers))
        assert str(ack.segment("MSA")[1]) == "AA"  # the last good pair stays in use
        [warning] = [
            r.getMessage() for r in caplog.records if r.name == "router.connectors.mllp.tls"
        ]
        assert f"source.mllp.tls.key: {key}: the key does not match {cert}" in warning
    finally:
        running.stop()


def test_the_expiry_gauge_reports_the_pair_served_not_a_bad_renewal(
    tmp_path, store_url, certs, hl7_samples
):
    """A renewed certificate without its key is not served (the last good pair is): the
    gauge says when the served certificate expires, not the file's new one."""
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(certs.server_cert.read_bytes())
    key.write_bytes(certs.server_key.read_bytes())
    running = start_engine(tmp_path, store_url, {"cert": str(cert), "key": str(key)})
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", "/CN=renewed", "-keyout", "renewed.key",
             "-out", "renewed.pem"],
            check=True, capture_output=True, cwd=tmp_path,
        )  # fmt: skip
        cert.write_bytes((tmp_path / "renewed.pem").read_bytes())  # its key never copied
        collector = metrics.CertificateCollector(running.engine.presented_certificates)
        family, *_ = collector.collect()
        served = ssl.cert_time_to_seconds(openssl_says(certs.server_cert, "-enddate"))
        assert [(s.labels["role"], s.value) for s in family.samples] == [("mllp_server", served)]
        ack = send(running.port("inbound"), hl7_message(hl7_samples[GHH], "OLD-3"),
                   client_context(certs))  # fmt: skip
        assert str(ack.segment("MSA")[1]) == "AA"  # the last good pair, as the gauge says
    finally:
        running.stop()


@pytest.fixture(scope="module")
def revocations(tmp_path_factory: pytest.TempPathFactory) -> Revocations:
    return make_revocations(tmp_path_factory.mktemp("crl"))


def test_a_revoked_client_certificate_is_refused_from_the_crl_that_lists_it_on(
    tmp_path, store_url, revocations, hl7_samples, caplog
):
    """The CRL is read again when it changes, as the certificates are: no restart."""
    certs, crl = revocations.certs, tmp_path / "clients.crl"
    crl.write_bytes(revocations.none.read_bytes())
    source = tls_source(certs, client_ca=str(certs.ca), require_client_cert=True, crl=str(crl))
    running = start_engine(tmp_path, store_url, source)
    try:
        port = running.port("inbound")
        revoked = client_context(certs, identity=revocations.revoked)
        ack = send(port, hl7_message(hl7_samples[GHH], "CRL-1"), revoked)
        assert str(ack.segment("MSA")[1]) == "AA"  # not revoked yet

        crl.write_bytes(revocations.listed.read_bytes())
        before = failed_handshakes("inbound")
        with caplog.at_level(logging.WARNING, logger=LISTENER_LOG):
            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                send(port, hl7_message(hl7_samples[GHH], "CRL-2"), revoked)
            wait_until(lambda: failed_handshakes("inbound") == before + 1)
        assert stored_status(running, "CRL-2") == []
        [line] = [r.getMessage() for r in caplog.records if "handshake" in r.getMessage()]
        assert "certificate revoked" in line
        ack = send(port, hl7_message(hl7_samples[GHH], "CRL-3"), client_context(certs, certs))
        assert str(ack.segment("MSA")[1]) == "AA"  # another client of the CA

        engine = running.engine
        collector = metrics.CertificateCollector(lambda: [], list, engine.served_crls)
        *_, next_update = collector.collect()
        due = ssl.cert_time_to_seconds(openssl_crl_says(revocations.listed, "-nextupdate"))
        assert [(s.labels["file"], s.value) for s in next_update.samples] == [(str(crl), due)]
    finally:
        running.stop()


def openssl_crl_says(crl: Path, option: str) -> str:
    done = subprocess.run(
        ["openssl", "crl", "-noout", option, "-in", str(crl)],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().split("=", 1)[1]


def openssl_says(cert: Path, option: str) -> str:
    """What ``openssl x509`` prints for ``option`` (``-serial``, ``-fingerprint``), after
    its ``=``: the figures an auditor compares with the sender's certificate file."""
    done = subprocess.run(
        ["openssl", "x509", "-noout", option, "-sha256", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip().split("=", 1)[1]


def test_the_engine_reports_its_client_ca_and_warns_that_it_expires_soon(
    tmp_path, store_url, certs, caplog
):
    """The test CA lasts two days: /metrics has it, and the start says it ends soon."""
    source = tls_source(certs, client_ca=str(certs.ca), require_client_cert=True)
    with caplog.at_level(logging.WARNING, logger="router.engine"):
        running = start_engine(tmp_path, store_url, source)
    try:
        engine = running.engine
        collector = metrics.CertificateCollector(
            engine.presented_certificates, engine.trusted_bundles
        )
        _, cas, ends, _ = collector.collect()
        expiry = ssl.cert_time_to_seconds(openssl_says(certs.ca, "-enddate"))
        assert [(s.labels["role"], s.labels["subject"], s.value) for s in cas.samples] == [
            ("mllp_server", "CN=tie test CA", expiry)
        ]
        assert [s.value for s in ends.samples] == [expiry]
    finally:
        running.stop()
    assert (
        f"channel inbound: source.mllp.tls.client_ca: {certs.ca}: the CA CN=tie test CA expires"
        in caplog.text
    )


def test_mutual_tls_stores_which_sender_delivered_each_message(
    mutual_engine, certs, hl7_samples, capsys
):
    """The verified client certificate is stored with the message, shown by run.py show,
    and found by its subject; it links no other message into the timeline."""
    context = client_context(certs, identity=certs)
    for control_id in ("MTLS-1", "MTLS-1B"):
        message = hl7_message(hl7_samples[GHH], control_id)
        ack = send(mutual_engine.port("inbound"), message, context)
        assert str(ack.segment("MSA")[1]) == "AA"
    reject = asyncio.run(send_raw_over_tls(mutual_engine.port("inbound"), b"NOT HL7", context))
    assert b"MSA|AR|" in reject  # refused input is stored with who sent it too
    with mutual_engine.store.read() as conn:
        row = conn.execute(select(messages).where(messages.c.control_id == "MTLS-1")).one()
        refused = conn.scalar(select(messages.c.source).where(messages.c.raw == b"NOT HL7"))
        found = search(conn, MessageFilter(key="CN=tie test client"))
        detail = message_detail(conn, row.id)
    source = json.loads(row.source)
    assert source == {
        "protocol": "mllp",
        "remote": source["remote"],
        "tls": "TLSv1.3",
        "client_subject": "CN=tie test client",
        "client_issuer": "CN=tie test CA",
        "client_serial": openssl_says(certs.client_cert, "-serial"),
        "client_sha256": openssl_says(certs.client_cert, "-fingerprint"),
    }
    assert source["remote"].startswith("127.0.0.1:")
    assert json.loads(refused)["client_sha256"] == source["client_sha256"]
    assert sorted(str(m["control_id"]) for m in found) == ["MTLS-1", "MTLS-1B", "None"]
    assert [t["control_id"] for t in detail["timeline"]] == ["MTLS-1"]
    _print_detail(detail)
    shown = capsys.readouterr().out
    assert f"from          mllp {source['remote']} over TLSv1.3" in shown
    assert "client cert   CN=tie test client" in shown
    assert f"    sha256      {source['client_sha256']}" in shown


@pytest.mark.parametrize("identity", ["none", "another CA"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    mutual_engine, certs, strangers, hl7_samples, identity, caplog
):
    port = mutual_engine.port("inbound")
    before = failed_handshakes("inbound")
    context = client_context(certs, identity=strangers if identity == "another CA" else None)
    with caplog.at_level(logging.WARNING, logger=LISTENER_LOG):
        # TLS 1.3 tells the client only after its side of the handshake: on its first read.
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            send(port, hl7_message(hl7_samples[GHH], "MTLS-2"), context)
        wait_until(lambda: failed_handshakes("inbound") == before + 1)
    assert stored_status(mutual_engine, "MTLS-2") == []
    [line] = [r.getMessage() for r in caplog.records if "handshake" in r.getMessage()]
    assert "certificate" in line.lower()
    ack = send(port, hl7_message(hl7_samples[GHH], "MTLS-3"), client_context(certs, certs))
    assert str(ack.segment("MSA")[1]) == "AA"


def test_a_sender_that_trusts_another_ca_refuses_the_listener(tls_engine, strangers, hl7_samples):
    with pytest.raises(ssl.SSLCertVerificationError):
        send(
            tls_engine.port("inbound"),
            hl7_message(hl7_samples[GHH], "X-1"),
            client_context(strangers),
        )
    assert stored_status(tls_engine, "X-1") == []


# --- the destination -----------------------------------------------------------------------


def receiver_context(certs: Certificates, *, require_client: bool = False) -> ssl.SSLContext:
    """The downstream system's side: its certificate, and clients verified when asked."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
    return context


@pytest.fixture
def receivers() -> Iterator[Any]:
    started: list[Hl7Receiver] = []

    def start(context: ssl.SSLContext) -> Hl7Receiver:
        receiver = Hl7Receiver(tls=context)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def sending_engine(tmp_path: Any, store_url: str) -> Iterator[Any]:
    """An engine whose channel ``orders`` sends to an MLLP receiver over TLS."""
    started: list[RunningEngine] = []

    def start(port: int, tls: dict[str, Any]) -> RunningEngine:
        orders = channel(
            {
                "name": "orders",
                "source": {"mllp": {"port": 0}},
                "destinations": {
                    "lab": {
                        "mllp": {"host": "127.0.0.1", "port": port, "tls": tls},
                        "retry": {"max_attempts": 100, "backoff": ["100ms", "100ms"]},
                    }
                },
            }
        )
        running = RunningEngine(engine_config(tmp_path, store_url), {"orders": orders})
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def accept_plain(running: RunningEngine, message: bytes) -> None:
    from hl7.client import MLLPClient

    with MLLPClient("127.0.0.1", running.port("orders")) as client:
        client.socket.settimeout(GUARD)
        assert b"MSA|AA|" in client.send_message(message)


def delivery_state(running: RunningEngine) -> tuple[str | None, list[str]]:
    """The one delivery's status (None until the message is processed) and its errors."""
    with running.store.read() as conn:
        status = conn.execute(select(deliveries.c.status)).scalar_one_or_none()
        errors = conn.execute(select(attempts.c.error).order_by(attempts.c.id)).scalars()
        return status, [e or "" for e in errors]


def test_the_destination_verifies_the_receiver_and_delivers(
    receivers, sending_engine, certs, hl7_samples
):
    receiver = receivers(receiver_context(certs))
    running = sending_engine(receiver.port, {"ca": str(certs.ca), "server_name": "localhost"})
    accept_plain(running, hl7_message(hl7_samples[GHH], "OUT-1"))
    wait_until(lambda: delivery_state(running)[0] == "sent")
    assert receiver.control_ids() == ["OUT-1"]


def test_mutual_tls_presents_the_client_certificate(receivers, sending_engine, certs, hl7_samples):
    receiver = receivers(receiver_context(certs, require_client=True))
    tls = {"ca": str(certs.ca), "cert": str(certs.client_cert), "key": str(certs.client_key)}
    running = sending_engine(receiver.port, tls)  # host 127.0.0.1: in the certificate's names
    accept_plain(running, hl7_message(hl7_samples[GHH], "OUT-2"))
    wait_until(lambda: delivery_state(running)[0] == "sent")
    assert receiver.control_ids() == ["OUT-2"]


@pytest.mark.parametrize(
    ("tls", "reason"),
    [
        ({"ca": "other"}, "receiver's certificate not accepted: "),
        ({"server_name": "lab.example.org"}, "receiver's certificate not accepted: Hostname mis"),
        ({}, "receiver's certificate not accepted: "),  # the system's CAs: not the test CA
    ],
    ids=["wrong CA", "wrong host name", "system CAs"],
)
def test_a_receiver_not_trusted_is_a_retry_with_the_reason(
    receivers, sending_engine, certs, strangers, hl7_samples, tls, reason
):
    receiver = receivers(receiver_context(certs))
    settings = {"ca": str(certs.ca), **tls}
    if settings["ca"] == "other":
        settings["ca"] = str(strangers.ca)
    if not tls:
        del settings["ca"]
    running = sending_engine(receiver.port, settings)
    accept_plain(running, hl7_message(hl7_samples[GHH], "OUT-3"))
    wait_until(lambda: len(delivery_state(running)[1]) >= 2)  # retried, not given up on
    status, errors = delivery_state(running)
    assert status in ("pending", "retrying")
    assert all(f"127.0.0.1:{receiver.port}: TLS: {reason}" in e for e in errors), errors
    assert receiver.received == []


# --- run.py send ---------------------------------------------------------------------------


def channel_as_configured(running: RunningEngine, source_tls: dict[str, Any]) -> Any:
    """The channel as ``run.py send`` reads it, with the port the engine listens on."""
    mllp = {"port": running.port("inbound"), "tls": source_tls}
    return channel({"name": "inbound", "source": {"mllp": mllp}, "destinations": {}})


def test_run_py_send_speaks_tls_to_a_tls_source(tls_engine, certs, tmp_path, hl7_samples):
    path = tmp_path / "two.hl7"
    path.write_bytes(
        hl7_message(hl7_samples[GHH], "CLI-1") + hl7_message(hl7_samples[GHH], "CLI-2")
    )
    configured = channel_as_configured(tls_engine, tls_source(certs))
    rows = send_files(tls_engine.engine.config, configured, [path], timeout=GUARD)
    assert [(r["control_id"], r["ack"]) for r in rows] == [("CLI-1", "AA"), ("CLI-2", "AA")]


def test_run_py_send_presents_a_client_certificate_when_given(
    mutual_engine, certs, strangers, tmp_path, hl7_samples
):
    path = tmp_path / "one.hl7"
    path.write_bytes(hl7_message(hl7_samples[GHH], "CLI-3"))
    source = tls_source(certs, client_ca=str(certs.ca), require_client_cert=True)
    configured = channel_as_configured(mutual_engine, source)
    config = mutual_engine.engine.config
    client = (certs.client_cert, certs.client_key)
    rows = send_files(config, configured, [path], timeout=GUARD, client=client)
    assert [(r["control_id"], r["ack"]) for r in rows] == [("CLI-3", "AA")]
    with pytest.raises(CommandError) as no_cert:
        send_files(config, configured, [path], timeout=GUARD)
    assert "the server requires a client certificate" in str(no_cert.value)
    assert "pass --cert CERT.pem, and --key KEY.pem" in str(no_cert.value)
    assert f"issued by a CA in {certs.ca}" in str(no_cert.value)
    stranger = (strangers.client_cert, strangers.client_key)
    refused = send_files(config, configured, [path], timeout=GUARD, client=stranger)
    assert [r["ack"] for r in refused] == [None]
    expected = f"may not have accepted the client certificate in {strangers.client_cert}"
    assert expected in refused[0]["text"]
    # Where the channel file says nothing of it, the server's refusal says what to pass.
    unsaid = send_files(config, channel_as_configured(mutual_engine, tls_source(certs)), [path],
                        timeout=GUARD)  # fmt: skip
    assert "the server may require a client certificate: pass --cert" in unsaid[0]["text"]
    assert len(stored_status(mutual_engine, "CLI-3")) == 1  # the refused copies are not stored


def test_run_py_send_sends_nothing_to_a_server_with_another_certificate(
    tls_engine, strangers, tmp_path, hl7_samples
):
    path = tmp_path / "one.hl7"
    path.write_bytes(hl7_message(hl7_samples[GHH], "CLI-4"))
    configured = channel_as_configured(tls_engine, tls_source(strangers))
    with pytest.raises(CommandError, match="did not present the certificate in"):
        send_files(tls_engine.engine.config, configured, [path], timeout=GUARD)
    assert stored_status(tls_engine, "CLI-4") == []


# --- under uvloop, the loop run.py serve installs ------------------------------------------


def test_under_uvloop_every_handshake_is_taken_at_once(certs, hl7_samples):
    """uvloop starts reading a connection after ``connection_made`` whatever the protocol
    paused, so an upgrade taken after accepting could read the ClientHello (or a plain
    sender's frame) as MLLP and wait out the idle timeout. Each sender here is answered
    long before it."""
    import uvloop

    async def ingest(item: Any, *, peer: Any = None) -> Receipt:
        return Receipt(uuid="stored", ack=item.ack)

    async def scenario() -> tuple[list[str], float]:
        source = {"port": 0, "idle_timeout": "60s", "tls": tls_source(certs)}
        inbound = channel({"name": "uvloop-tls", "source": {"mllp": source}})
        listener = MllpListener(inbound, ingest)
        await listener.start()
        before = failed_handshakes("uvloop-tls")
        try:
            answers = []
            async with asyncio.timeout(GUARD / 2):
                for n in range(10):
                    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
                    writer.write(b"\x0b" + hl7_message(hl7_samples[GHH], f"RAW-{n}") + b"\x1c\r")
                    assert await reader.read() == b""  # refused at once, not at the idle timeout
                    writer.close()
                    message = hl7_message(hl7_samples[GHH], f"UV-{n}")
                    ack = await send_over_tls(listener.port, message, client_context(certs))
                    answers.append(str(ack.segment("MSA")[1]))
            return answers, failed_handshakes("uvloop-tls") - before
        finally:
            await listener.stop()

    answers, failed = uvloop.run(scenario())
    assert answers == ["AA"] * 10
    assert failed == 10
