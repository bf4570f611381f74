"""What a FHIR source takes by Content-Type and Content-Encoding: FHIR JSON of its own version."""

from __future__ import annotations

import pytest

from router.fhir.negotiation import unsupported


@pytest.mark.parametrize(
    ("content_type", "fhir"),
    [
        ("application/fhir+json", "R4"),
        ("application/json; charset=utf-8", "R4"),
        ("application/fhir+json; fhirVersion=4.0", "R4"),
        ('Application/FHIR+JSON; charset=utf-8; fhirVersion="4.0.1"', "R4"),
        ('application/fhir+json; charset="UTF-8"', "R4"),
        ("application/fhir+json;charset=utf8", "R4"),
        ("application/fhir+json; fhirVersion=3.0", "STU3"),
        ("application/fhir+json; fhirversion=3.0.2", "STU3"),
    ],
)
def test_fhir_json_of_the_channels_version_is_taken(content_type: str, fhir: str) -> None:
    assert unsupported({"content-type": content_type}, fhir) is None
    assert unsupported({"content-type": content_type, "content-encoding": "identity"}, fhir) is None


@pytest.mark.parametrize(
    ("headers", "fhir", "said"),
    [
        ({"content-type": "application/fhir+xml"}, "R4", "content type application/fhir+xml"),
        ({}, "R4", "content type none"),
        ({"content-type": "application/fhir+json; fhirVersion=3.0"}, "R4", "fhirVersion=4.0"),
        ({"content-type": "application/json;fhirVersion=4.0"}, "STU3", "fhirVersion=3.0"),
        ({"content-type": "application/fhir+json; fhirVersion=5"}, "R4", "fhirVersion=4.0"),
        ({"content-type": "application/fhir+json; charset=iso-8859-1"}, "R4", "is UTF-8"),
        ({"content-type": 'application/json; charset="utf-16"'}, "STU3", "is UTF-8"),
        (
            {"content-type": "application/fhir+json", "content-encoding": "gzip"},
            "R4",
            "content encoding 'gzip'",
        ),
    ],
)
def test_anything_else_is_415_saying_what_is_taken(
    headers: dict[str, str], fhir: str, said: str
) -> None:
    refused = unsupported(headers, fhir)
    assert refused is not None
    assert refused.status == 415
    [issue] = refused.issues
    assert issue.code == "not-supported"
    assert said in issue.diagnostics
    assert refused.headers == (
        {"Accept-Encoding": "identity"} if "content-encoding" in headers else {}
    )
