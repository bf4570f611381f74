"""FHIR paths: what they reach in the BaRS samples, how they fail, and where they are accepted."""

from __future__ import annotations

import json

import pytest

from router.conditions import compile_conditions
from router.config import ChannelConfig, Condition
from router.fhir.path import parse, values
from router.message import Message

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def test_values_in_a_message_bundle(bars_samples):
    request = bars_samples["servicerequest-request_validation"]
    assert values(request, "MessageHeader.eventCoding.code") == ["servicerequest-request"]
    assert values(request, "Bundle.entry.resource.ofType(MessageHeader).eventCoding.code") == [
        "servicerequest-request"
    ]
    assert values(request, "MessageHeader.destination[0].endpoint") == [
        "http://fhir.nhs.uk/Id/dos-service-id|111111111"
    ]
    assert values(request, "Bundle.id") == ["86e3371d-1c15-4862-9552-d9560f8292ba"]
    assert values(request, f"Patient.identifier.where(system='{NHS}').value") == ["3478526985"]
    assert values(request, "Organization.identifier.value") == ["G82080", "RYE", "RND"]
    assert values(request, "Organization.identifier.value.first()") == ["G82080"]
    assert values(request, "Bundle.entry[1].resource.resourceType") == ["ServiceRequest"]
    assert values(request, "ServiceRequest.status") == ["active"]
    assert values(request, "Appointment.status") == []
    assert values(request, "MessageHeader.nothing.here") == []


def test_non_text_values_are_compact_json_so_exists_works(bars_samples):
    request = bars_samples["servicerequest-request_validation"]
    assert values(request, "HealthcareService.active") == ["true"]
    assert values(request, "MessageHeader.response") == []
    [coding] = values(request, "MessageHeader.eventCoding")
    assert json.loads(coding)["code"] == "servicerequest-request"


def test_a_resource_path_on_a_single_resource():
    immunization = {"resourceType": "Immunization", "status": "completed", "lotNumber": 7}
    assert values(immunization, "Immunization.status") == ["completed"]
    assert values(immunization, "Immunization.lotNumber") == ["7"]
    assert values(immunization, "Patient.id") == []
    assert values([1, 2], "Bundle.id") == []


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("patient.id", "starts with a resource type"),
        ("Patient..id", "position 8"),
        ("Patient.identifier.where(system=nhs)", "expected a name"),
        ("Patient.id[x]", "expected '.'"),
    ],
)
def test_bad_paths_say_where(path, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        parse(path)


def test_a_fhir_message_reads_its_values_with_paths(bars_samples):
    raw = json.dumps(bars_samples["booking-request_process-message"]).encode()
    message = Message(raw, "bars", content_type="fhir+json")
    assert message.get("MessageHeader.eventCoding.code") == "booking-request"
    assert message.values("Appointment.status") == ["booked"]
    predicate = compile_conditions(
        [
            Condition.model_validate(
                {"field": "MessageHeader.eventCoding.code", "in": ["booking-request"]}
            )
        ]
    )
    assert predicate(message)


def test_channels_take_fhir_and_hl7_paths_and_refuse_bad_ones():
    base = {"name": "c", "source": {"http": {}}, "destinations": {}}
    ChannelConfig.model_validate(
        {
            **base,
            "correlate": {"bundle": "Bundle.id", "placer": "ORC-2.1"},
            "filter": [{"field": "MessageHeader.eventCoding.code", "exists": True}],
        }
    )
    with pytest.raises(ValueError, match="bad FHIR path"):
        ChannelConfig.model_validate({**base, "correlate": {"bundle": "Bundle..id"}})
    with pytest.raises(ValueError, match="bad field path 'PID-0'"):
        ChannelConfig.model_validate({**base, "filter": [{"field": "PID-0", "exists": True}]})
