"""The SMTP destination against a real local SMTP server (aiosmtpd), plain and with STARTTLS."""

from __future__ import annotations

import ssl
from email import message_from_bytes, policy

import pytest
from mesh_testing import SmtpRelay
from sqlalchemy import select
from tie_testing import (
    Certificates,
    RunningEngine,
    channel,
    engine_config,
    free_ports,
    make_certificates,
    wait_until,
)

from router.store.inbound import Inbound
from router.store.schema import deliveries


def _channel(port, **smtp):
    return channel(
        {
            "name": "mail",
            "source": {"channel": {}},
            "destinations": {
                "ops": {
                    "smtp": {
                        "host": "127.0.0.1",
                        "port": port,
                        "from": "tie@example.nhs.uk",
                        "to": ["ops@example.nhs.uk"],
                        "subject": "Report {subject_line}",
                        "body": "Dear ops,\n\n{text}\n",
                        **smtp,
                    },
                    "retry": {"max_attempts": 2, "backoff": ["50ms", "50ms"]},
                }
            },
        }
    )


def _run(tmp_path, store_url, mail_channel, payload=b"3 patients", headers=None):
    running = RunningEngine(engine_config(tmp_path, store_url), {"mail": mail_channel})
    running.engine.writer.submit_sync(
        Inbound("mail", payload, content_type="text/plain", source={"subject_line": "A82023"})
    )
    return running


def _settled(store):
    with store.read() as conn:
        row = conn.execute(select(deliveries)).first()
    return row if row is not None and row.status in ("sent", "failed") else None


def test_an_email_is_sent_with_templated_subject_and_body(tmp_path, store_url):
    relay = SmtpRelay()
    running = _run(tmp_path, store_url, _channel(relay.port))
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert delivery.status == "sent"
        (rcpts, content) = relay.received[0]
        email = message_from_bytes(content, policy=policy.default)
        assert rcpts == ["ops@example.nhs.uk"]
        assert (email["From"], email["Subject"]) == ("tie@example.nhs.uk", "Report A82023")
        assert email.get_content().replace("\r\n", "\n") == "Dear ops,\n\n3 patients\n"
    finally:
        running.stop()
        relay.stop()


def test_a_refused_recipient_fails_the_delivery(tmp_path, store_url):
    relay = SmtpRelay()
    running = _run(tmp_path, store_url, _channel(relay.port, to=["nobody@example.nhs.uk"]))
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert (delivery.status, delivery.attempts) == ("failed", 1)
        assert "550" in delivery.last_error
        assert relay.received == []
    finally:
        running.stop()
        relay.stop()


def test_an_unreachable_relay_is_retried(tmp_path, store_url):
    running = _run(tmp_path, store_url, _channel(free_ports(1)[0]))
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert (delivery.status, delivery.attempts) == ("failed", 2)
        assert "ConnectionRefusedError" in delivery.last_error
    finally:
        running.stop()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("relay-tls"))


def _tls_relay(certificates: Certificates) -> SmtpRelay:
    """A relay that requires STARTTLS, with a certificate of the test CA for 127.0.0.1."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.server_cert, certificates.server_key)
    return SmtpRelay(tls_context=context, require_starttls=True)


def test_starttls_is_used_and_the_relay_certificate_verified(tmp_path, store_url, certificates):
    relay = _tls_relay(certificates)
    running = _run(
        tmp_path,
        store_url,
        _channel(relay.port, starttls=True, ca=str(certificates.ca), attach=True),
        payload=b"a,b\r\n1,2\r\n",
    )
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert delivery.status == "sent", delivery.last_error
        email = message_from_bytes(relay.received[0][1], policy=policy.default)
        (attachment,) = list(email.iter_attachments())
        assert attachment.get_content() == b"a,b\r\n1,2\r\n"
    finally:
        running.stop()
        relay.stop()


def test_without_starttls_a_relay_that_requires_it_refuses(tmp_path, store_url, certificates):
    relay = _tls_relay(certificates)
    running = _run(tmp_path, store_url, _channel(relay.port))
    try:
        delivery = wait_until(lambda: _settled(running.store))
        assert delivery.status == "failed"
        assert "530" in delivery.last_error
        assert relay.received == []
    finally:
        running.stop()
        relay.stop()
