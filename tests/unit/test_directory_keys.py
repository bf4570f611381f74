"""Directory keys, addresses and endpoints.yaml: what is accepted, and errors that say where."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from router.config import ConfigError
from router.directory import Key, check_address, load_endpoints_file, parse_key, system_kind


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("ods:rye", None, Key("ods", "RYE")),
        ("ODS:RYE", None, Key("ods", "RYE")),
        ("dos:111111111", None, Key("dos", "111111111")),
        ("asid:200000000115", None, Key("asid", "200000000115")),
        ("http://fhir.nhs.uk/Id/dos-service-id|111111111", None, Key("dos", "111111111")),
        ("https://fhir.nhs.uk/Id/dos-service-id|111111111", None, Key("dos", "111111111")),
        ("https://fhir.nhs.uk/id/ods-organization-code|g82080", None, Key("ods", "G82080")),
        ("https://fhir.nhs.uk/Id/nhsSpineASID|918999198738", None, Key("asid", "918999198738")),
        ("699X0", "ods", Key("ods", "699X0")),
    ],
)
def test_keys_are_read_from_every_written_form(text, default, expected):
    assert parse_key(text, default) == expected


@pytest.mark.parametrize(
    ("text", "default", "problem"),
    [
        ("https://example.org/ids|123", None, "not an ODS, DoS or ASID identifier system"),
        ("RYE", None, "names no kind"),
        ("nhs:9434765919", None, "names no kind"),
        ("ods:R Y E", None, "not a valid ods identifier"),
        ("ods:", None, "not a valid ods identifier"),
        ("x" * 70, "dos", "not a valid dos identifier"),
    ],
)
def test_bad_keys_say_why(text, default, problem):
    with pytest.raises(ValueError, match=problem):
        parse_key(text, default)


def test_identifier_systems_are_compared_without_scheme_and_case():
    assert system_kind("HTTPS://FHIR.NHS.UK/ID/ODS-ORGANIZATION-CODE/") == "ods"
    assert system_kind("https://fhir.nhs.uk/Id/nhs-number") is None
    assert system_kind(None) is None


@pytest.mark.parametrize(
    ("transport", "address", "expected"),
    [
        ("fhir", "https://provider.example/STU3/", "https://provider.example/STU3"),
        ("fhir", "http://127.0.0.1:9101/fhir/R4", "http://127.0.0.1:9101/fhir/R4"),
        ("mllp", "lab.example:2575", "lab.example:2575"),
        ("mllp", "[::1]:2575", "[::1]:2575"),
        ("mesh", "x26abc1", "X26ABC1"),
    ],
)
def test_addresses_suit_their_transport(transport, address, expected):
    assert check_address(transport, address) == expected


@pytest.mark.parametrize(
    ("transport", "address"),
    [
        ("fhir", "ftp://provider.example"),
        ("fhir", "provider.example/fhir"),
        ("mllp", "lab.example"),
        ("mllp", "lab.example:99999"),
        ("mesh", "X26/ABC"),
        ("smtp", "a@b"),
    ],
)
def test_wrong_addresses_are_refused(transport, address):
    with pytest.raises(ValueError):
        check_address(transport, address)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoints.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_an_entry_becomes_one_endpoint_per_interaction(tmp_path):
    path = _file(
        tmp_path,
        """
        endpoints:
          - dos: "111111111"
            name: Receiver
            fhir: http://127.0.0.1:9101/fhir/R4/
            interactions: [servicerequest-request, booking-request]
          - ods: g82080
            mllp: 127.0.0.1:2575
            interactions: [immunisation]
            scope: all
        """,
    )
    found = load_endpoints_file(path)
    assert [(e.key, e.interaction, e.transport, e.address, e.scope) for e in found] == [
        (
            Key("dos", "111111111"),
            "servicerequest-request",
            "fhir",
            "http://127.0.0.1:9101/fhir/R4",
            "addressed",
        ),
        (
            Key("dos", "111111111"),
            "booking-request",
            "fhir",
            "http://127.0.0.1:9101/fhir/R4",
            "addressed",
        ),
        (Key("ods", "G82080"), "immunisation", "mllp", "127.0.0.1:2575", "all"),
    ]
    assert {e.origin for e in found} == {"config"}


@pytest.mark.parametrize(
    ("entry", "where", "problem"),
    [
        ("- {dos: '1', interactions: [x]}", "endpoints[0]", "exactly one of fhir, mllp, mesh"),
        (
            "- {dos: '1', ods: A1, fhir: 'http://a', interactions: [x]}",
            "endpoints[0]",
            "exactly one of ods, dos, asid",
        ),
        ("- {dos: '1', fhir: 'http://a', interactions: []}", "endpoints[0].interactions", ""),
        ("- {dos: '1', fhir: 'ftp://a', interactions: [x]}", "endpoints[0]", "http(s) base URL"),
        ("- {dos: '1', fhir: 'http://a', interactions: [x], colour: red}", "colour", "unknown"),
        (
            "- {dos: '1', fhir: 'http://a', interactions: [x]}\n"
            "  - {dos: '1', fhir: 'http://b', interactions: [x]}",
            "endpoints[1]",
            "listed twice",
        ),
    ],
)
def test_file_errors_name_the_file_and_entry(tmp_path, entry, where, problem):
    path = _file(tmp_path, f"endpoints:\n  {entry}\n")
    with pytest.raises(ConfigError) as caught:
        load_endpoints_file(path)
    text = str(caught.value)
    assert str(path) in text
    assert where in text
    assert problem in text
