"""Checks on what FHIR endpoints receive: every BaRS sample passes, and each listed failure is
refused with a problem and its location."""

from __future__ import annotations

import copy

import pytest

from router.config.http import BARS_EVENT_SYSTEM, BARS_EVENTS
from router.fhir.outcome import Rejected, operation_outcome
from router.fhir.validation import message_header, parse_json, require_resource, validate

MESSAGES = (
    "booking-request_process-message",
    "booking-request_http-200-response",
    "servicerequest-request_validation",
    "servicerequest-response_validation",
    "servicerequest-request_http-200-response",
)


def _check(document):
    """What an endpoint checks of a message: its shape, then its models."""
    header = message_header(
        document, events=BARS_EVENTS, event_system=BARS_EVENT_SYSTEM, version="R4"
    )
    validate(document, "R4")
    return header


def check_resource(document, resource_type, version):
    """What an endpoint checks of a created resource: its type, then its model."""
    require_resource(document, resource_type)
    validate(document, version)


def _refusal(document) -> Rejected:
    with pytest.raises(Rejected) as caught:
        _check(document)
    return caught.value


@pytest.mark.parametrize("name", MESSAGES)
def test_every_bars_message_sample_passes(bars_samples, name):
    header = _check(bars_samples[name])
    assert header["resourceType"] == "MessageHeader"


def test_the_other_samples_are_valid_resources(bars_samples):
    for name in (
        "ServiceRequest_search_GET-success",
        "OperationOutcome_PROXY_404-not-found",
        "OperationOutcome_REC_400-invalid",
    ):
        document = bars_samples[name]
        check_resource(document, document["resourceType"], "R4")


def test_bad_json_names_line_and_column():
    with pytest.raises(Rejected) as caught:
        parse_json(b'{"resourceType": "Bundle",\n "type": message}')
    [issue] = caught.value.issues
    assert (caught.value.status, issue.code) == (400, "structure")
    assert "line 2 column 10" in issue.diagnostics


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (b'{"resourceType": "Bundle", "id": "a", "type": "message", "id": "b"}', "Bundle.id"),
        (
            b'{"resourceType": "Bundle", "entry": [{}, {"resource": '
            b'{"resourceType": "Patient", "id": "p", "id": "q"}}]}',
            "Bundle.entry[1].resource.id",
        ),
        (b'[{"a": 1}, {"a": 1, "b": 2, "a": 1}]', "$[1].a"),
    ],
)
def test_a_key_named_twice_is_refused_with_where(body, expression):
    # Parsers differ in which one they keep: a receiver could read another message.
    with pytest.raises(Rejected) as caught:
        parse_json(body)
    [issue] = caught.value.issues
    assert (caught.value.status, issue.code, issue.expression) == (400, "structure", expression)
    key = expression.rsplit(".", 1)[1]
    assert issue.diagnostics.startswith(f"duplicate key {key!r} in the object at ")


def test_a_resource_that_is_not_a_bundle(bars_samples):
    refusal = _refusal({"resourceType": "Patient", "id": "p1"})
    [issue] = refusal.issues
    assert (issue.code, issue.expression) == ("invalid", "resourceType")
    assert "expected a Bundle, got a Patient" in issue.diagnostics
    assert _refusal([1, 2]).issues[0].diagnostics == "expected a Bundle, got not a FHIR resource"


def test_a_bundle_that_is_not_a_message(bars_samples):
    document = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    document["type"] = "collection"
    [issue] = _refusal(document).issues
    assert issue.expression == "Bundle.type"
    assert "not a message (type is 'collection')" in issue.diagnostics


def test_a_first_entry_that_is_not_a_message_header(bars_samples):
    document = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    document["entry"] = document["entry"][1:]
    [issue] = _refusal(document).issues
    assert issue.expression == "Bundle.entry[0].resource"
    assert "must be a MessageHeader (found ServiceRequest)" in issue.diagnostics
    document["entry"] = []
    assert "(found none)" in _refusal(document).issues[0].diagnostics


@pytest.mark.parametrize(
    ("system", "code"),
    [
        (BARS_EVENT_SYSTEM, "prescription-order"),
        ("https://fhir.nhs.uk/CodeSystem/message-event-servicerequest", "booking-request"),
    ],
)
def test_an_unknown_event(bars_samples, system, code):
    document = copy.deepcopy(bars_samples["booking-request_process-message"])
    document["entry"][0]["resource"]["eventCoding"] = {"system": system, "code": code}
    [issue] = _refusal(document).issues
    assert (issue.code, issue.expression) == (
        "code-invalid",
        "Bundle.entry[0].resource.eventCoding",
    )
    assert f"unknown event {system}|{code}" in issue.diagnostics


@pytest.mark.parametrize("code", [["booking-request"], {"code": "booking-request"}, 7])
def test_an_event_code_that_is_not_text_is_an_unknown_event(bars_samples, code):
    document = copy.deepcopy(bars_samples["booking-request_process-message"])
    document["entry"][0]["resource"]["eventCoding"]["code"] = code
    with pytest.raises(Rejected) as caught:
        message_header(document, events=BARS_EVENTS, event_system=BARS_EVENT_SYSTEM, version="R4")
    [issue] = caught.value.issues
    assert (issue.code, issue.expression) == (
        "code-invalid",
        "Bundle.entry[0].resource.eventCoding",
    )
    assert f"unknown event {BARS_EVENT_SYSTEM}| (known: " in issue.diagnostics


@pytest.mark.parametrize(
    ("entry", "element", "value"), [(0, "source", {"endpoint": 5}), (1, "resourceType", 5)]
)
def test_input_the_models_trip_over_is_refused_not_an_internal_error(
    bars_samples, entry, element, value
):
    document = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    document["entry"][entry]["resource"][element] = value
    with pytest.raises(Rejected) as caught:
        validate(document, "R4")
    assert caught.value.status == 400
    [issue] = caught.value.issues
    assert issue.code == "value"
    assert issue.diagnostics.startswith("the FHIR models could not read the Bundle: ")


def test_model_validation_names_every_problem_and_where(bars_samples):
    # Three of the defects the published example had (tests/data/bars/SOURCES.txt).
    published = copy.deepcopy(bars_samples["booking-request_http-200-response"])
    del published["entry"][1]["resource"]["participant"][0]["status"]
    slot = published["entry"][3]["resource"]
    slot["Schedule"] = slot.pop("schedule")
    published["entry"][4]["resource"]["id"] = "{ScheduleItem}"
    refusal = _refusal(published)
    found = {(i.code, i.expression) for i in refusal.issues}
    assert ("required", "Bundle.entry[1].resource.participant[0].status") in found
    assert ("required", "Bundle.entry[3].resource.schedule") in found
    assert ("structure", "Bundle.entry[3].resource.Schedule") in found
    assert ("value", "Bundle.entry[4].resource.id") in found
    assert "Bundle.entry[1].resource.participant[0].status: Value for the field" in refusal.reason


def test_the_published_search_example_fails_for_its_missing_resource_wrapper(bars_samples):
    published = copy.deepcopy(bars_samples["ServiceRequest_search_GET-success"])
    published["entry"] = [{**e["resource"], "search": e["search"]} for e in published["entry"]]
    with pytest.raises(Rejected) as caught:
        check_resource(published, "Bundle", "R4")
    assert caught.value.issues[0].expression == "Bundle.entry[0].resourceType"


def test_a_resource_of_another_type_than_the_url_names():
    with pytest.raises(Rejected) as caught:
        check_resource({"resourceType": "Patient"}, "Immunization", "R4")
    assert caught.value.issues[0].expression == "resourceType"


def test_stu3_models_where_a_channel_says_so():
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "participant": [{"actor": {"reference": "Patient/1"}, "status": "accepted"}],
    }
    check_resource(appointment, "Appointment", "STU3")
    broken = {**appointment, "participant": [{"actor": {"reference": "Patient/1"}}]}
    with pytest.raises(Rejected):
        check_resource(broken, "Appointment", "STU3")


def test_the_outcome_carries_code_details_and_location():
    refusal = Rejected(400, [])
    refusal.issues.extend([_refusal({"resourceType": "Patient"}).issues[0]] * 25)
    outcome = operation_outcome(refusal.issues, 400)
    assert outcome["resourceType"] == "OperationOutcome"
    assert len(outcome["issue"]) == 21
    first = outcome["issue"][0]
    assert first["details"]["coding"][0] == {
        "system": "https://fhir.nhs.uk/CodeSystem/http-error-codes",
        "code": "BAD_REQUEST",
    }
    assert first["expression"] == ["resourceType"]
    assert outcome["issue"][-1]["diagnostics"] == "5 more issue(s) not shown"
    check_resource(outcome, "OperationOutcome", "R4")
