"""The HTTP destination's rules: what an answer means, Retry-After, header templates."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import httpx
import pytest
from tie_testing import make_certificates

from router.config import ChannelConfig
from router.config.http import HttpTarget, TlsOptions
from router.connectors import Delivery
from router.connectors.http import (
    classify,
    join_url,
    media_type,
    render_headers,
    retry_after,
    ssl_context,
)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "sent"),
        (201, "sent"),
        (204, "sent"),
        (301, "fail"),
        (400, "fail"),
        (404, "fail"),
        (409, "fail"),
        (422, "fail"),
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
    ],
)
def test_each_status_class_has_its_outcome(status, outcome):
    result = classify(httpx.Response(status, content=b"{}"), b"{}")
    assert result.outcome == outcome
    assert result.response.startswith(f"HTTP/1.1 {status}".encode())
    assert (result.error is None) == (outcome == "sent")


def test_the_kept_answer_has_status_headers_and_body():
    response = httpx.Response(
        503, headers={"Retry-After": "7", "Content-Type": "application/fhir+json"}, content=b"x"
    )
    result = classify(response, b'{"resourceType": "OperationOutcome"}')
    head, _, body = result.response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"retry-after: 7" in head.lower()
    assert body == b'{"resourceType": "OperationOutcome"}'
    assert result.retry_after == 7.0


def test_retry_after_reads_seconds_and_http_dates():
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    assert retry_after({"retry-after": "120"}, now) == 120.0
    assert retry_after({"retry-after": "Mon, 05 Jan 2026 12:00:30 GMT"}, now) == 30.0
    assert retry_after({"retry-after": "Mon, 05 Jan 2026 11:00:00 GMT"}, now) == 0.0
    assert retry_after({"retry-after": "soon"}, now) is None
    assert retry_after({}, now) is None


def test_headers_are_rendered_from_the_delivery():
    target = HttpTarget(
        url="http://x",
        headers={
            "X-Request-Id": "{message_uuid}",
            "X-Attempt": "{attempt}",
            "X-Key": "k-{idempotency_key}",
        },
    )
    delivery = Delivery(7, 3, "uuid-3", "ch", "dest", b"{}", "fhir+json", "", "BUNDLE-1", 2)
    assert render_headers(target, delivery) == {
        "Content-Type": "application/fhir+json",
        "X-Request-Id": "uuid-3",
        "X-Attempt": "3",
        "X-Key": "k-BUNDLE-1",
    }


def test_content_types_and_urls():
    assert media_type("hl7v2") == "x-application/hl7-v2+er7"
    assert media_type("text/csv") == "text/csv"
    assert media_type("whatever") == "application/octet-stream"
    assert join_url("http://a/fhir/", "/$process-message") == "http://a/fhir/$process-message"
    assert join_url("http://a/fhir", "") == "http://a/fhir"


@pytest.mark.parametrize(
    ("http", "problem"),
    [
        ({}, "needs a url (or a directory lookup)"),
        ({"url": "ftp://a"}, "not an http(s) URL"),
        ({"url": "http://a", "headers": {"X-Id": "{uuid}"}}, "names 'uuid'"),
        ({"url": "http://a", "headers": {"Bad Name": "x"}}, "not a header name"),
        ({"url": "http://a", "method": "DELETE"}, "'POST' or 'PUT'"),
    ],
)
def test_bad_http_destinations_are_refused(http, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        ChannelConfig.model_validate(
            {"name": "c", "source": {"mllp": {"port": 0}}, "destinations": {"d": {"http": http}}}
        )


def test_one_tls_context_serves_every_sender_until_a_file_is_replaced(tmp_path):
    """Each sender loaded the CA bundle anew (60 ms each, many per engine start); a renewed
    file must still be read by the senders made after it."""
    certificates = make_certificates(tmp_path)
    options = TlsOptions(ca=certificates.ca)
    first = ssl_context(options)
    assert ssl_context(TlsOptions(ca=certificates.ca)) is first
    assert ssl_context(TlsOptions()) is not first
    assert ssl_context(TlsOptions(ca=certificates.ca, verify=False)) is not first

    renewed = certificates.ca.read_bytes() + certificates.server_cert.read_bytes()
    certificates.ca.write_bytes(renewed)
    again = ssl_context(options)
    assert again is not first
    assert again.cert_store_stats()["x509"] == first.cert_store_stats()["x509"] + 1
