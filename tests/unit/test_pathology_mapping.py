"""ORU^R01 to FHIR R4 message Bundle (mappings/pathology_fhir.py), element by element."""

from __future__ import annotations

import base64
import importlib
import json
import re
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from router import mappings
from router.fhir import FHIR_JSON
from router.message import Message

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "hl7v2"
ORU_SAMPLES = sorted(p.name for p in DATA.glob("ORU_R01_*.hl7"))
NHS = "ORU_R01_nhs_nwgmsa_v251.hl7"
MAYO_V23 = "ORU_R01_v23_cdc_epic_mayo.hl7"
GHH_V24 = "ORU_R01_v24_python-hl7_GHH.hl7"
OURS_V251 = "ORU_R01_tie_v251_gp_two_orders.hl7"
OURS_V23 = "ORU_R01_tie_v23_no_nhs_number.hl7"
OURS_V24 = "ORU_R01_tie_v24_invalid_nhs_number.hl7"
NHS_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
FLAGS = "urn:tie:pathology-flag"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


@pytest.fixture(scope="module")
def mapping() -> ModuleType:
    """The module as the engine loads it: mappings/ mounted as the package tie_mappings."""
    mappings.mount(ROOT / "mappings")
    return importlib.import_module("tie_mappings.pathology_fhir")


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def oru(*segments: str, version: str = "2.5.1", pid: str | None = None) -> bytes:
    """A small ORU^R01 with one order; ``segments`` follow its OBR."""
    kind = "ORU^R01" if version == "2.3" else "ORU^R01^ORU_R01"
    lines = [
        f"MSH|^~\\&|LAB|699X0|GPSYS|A81001|20240115120000||{kind}|CTRL-1|P|{version}",
        pid or "PID|1||9449305552^^^NHS^NH~M123^^^RA9^MR||DOE^John||19700101|M",
        "ORC|RE|P1^A81001|F1^699X0||CM||||||||||||||||THE SURGERY^^^^^^^^^A81001",
        "OBR|1|P1^A81001|F1^699X0|TEST^Test^L|||20240115100000",
        *segments,
    ]
    return "\r".join(lines).encode()


def obx(kind: str, value: str, *, units: str = "", ref: str = "", flags: str = "") -> str:
    return f"OBX|1|{kind}|X1^Result^L||{value}|{units}|{ref}|{flags}|||F"


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def one(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = resources(bundle, kind)
    return found


def walk(value: Any) -> list[Any]:
    """Every value in a JSON document, depth first."""
    if isinstance(value, dict):
        return [value, *(v for item in value.values() for v in walk(item))]
    if isinstance(value, list):
        return [value, *(v for item in value for v in walk(item))]
    return [value]


# --- the whole Bundle ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORU_SAMPLES)
def test_every_sample_is_a_message_bundle_with_resolvable_references(
    mapping: ModuleType, name: str
) -> None:
    bundle = mapping.oru_to_bundle(sample(name))
    assert bundle["type"] == "message"
    assert bundle["entry"][0]["resource"]["resourceType"] == "MessageHeader"
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert urls == [f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"]]
    assert len(set(urls)) == len(urls)
    references = [v["reference"] for v in walk(bundle) if isinstance(v, dict) and "reference" in v]
    assert references and set(references) <= set(urls)
    # absent fields are left out: no nulls, no empty strings, lists or objects
    assert all(v is not None and v != "" and v != [] and v != {} for v in walk(bundle))


@pytest.mark.parametrize("name", ORU_SAMPLES)
def test_the_same_message_always_gives_the_same_bundle(mapping: ModuleType, name: str) -> None:
    assert mapping.oru_to_bundle(sample(name)) == mapping.oru_to_bundle(sample(name))


def test_ids_are_derived_from_msh_10(mapping: ModuleType) -> None:
    first = mapping.oru_to_bundle(oru())
    second = mapping.oru_to_bundle(oru().replace(b"CTRL-1", b"CTRL-2"))
    assert first["id"] != second["id"]
    assert {e["fullUrl"] for e in first["entry"]}.isdisjoint(e["fullUrl"] for e in second["entry"])
    assert first["identifier"] == {
        "system": "https://tools.ietf.org/html/rfc4122",
        "value": first["id"],
    }


def test_timestamp_is_msh_7_in_local_time(mapping: ModuleType) -> None:
    assert mapping.oru_to_bundle(oru())["timestamp"] == "2024-01-15T12:00:00+00:00"
    summer = oru().replace(b"20240115120000", b"20240715120000")
    assert mapping.oru_to_bundle(summer)["timestamp"] == "2024-07-15T12:00:00+01:00"
    assert mapping.oru_to_bundle(sample(NHS))["timestamp"] == "2019-05-14T10:25:27+02:00"


def test_the_channel_transform_returns_the_bundle_as_fhir_json(mapping: ModuleType) -> None:
    message = Message(sample(OURS_V23), "lab-results")
    output = mapping.oru_to_fhir_bundle(message)
    assert output.content_type == FHIR_JSON
    assert json.loads(output.data) == mapping.oru_to_bundle(sample(OURS_V23))
    assert "nhs-number-missing" in message.flags
    assert message.correlations == []


def test_a_result_without_pid_is_refused(mapping: ModuleType) -> None:
    raw = (
        b"MSH|^~\\&|LAB|699X0|GP|A81001|20240115120000||ORU^R01^ORU_R01|C|P|2.5.1\rOBR|1|P1|F1|T^T"
    )
    with pytest.raises(ValueError, match="no PID"):
        mapping.oru_to_bundle(raw)


def test_an_invalid_bundle_is_refused_with_the_elements_named(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(oru())
    one(bundle, "Patient")["birthDate"] = "15/01/1970"
    with pytest.raises(ValueError, match=r"entry\.1\.resource\.birthDate"):
        mapping._validate(bundle)


# --- MessageHeader, parties -------------------------------------------------------------------


def test_message_header_event_source_and_destination(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(OURS_V251))
    header = one(bundle, "MessageHeader")
    assert header["eventCoding"] == mapping.EVENT
    assert header["source"] == {"name": "WinPath", "endpoint": f"{ODS_SYSTEM}|RBA11"}
    (destination,) = header["destination"]
    assert destination["endpoint"] == f"{ODS_SYSTEM}|A81001"
    organisations = {o["id"]: o for o in resources(bundle, "Organization")}
    practice = organisations[destination["receiver"]["reference"].removeprefix("urn:uuid:")]
    assert practice["identifier"] == [{"system": ODS_SYSTEM, "value": "A81001"}]
    assert practice["name"] == "THE VILLAGE SURGERY"
    lab = organisations[header["sender"]["reference"].removeprefix("urn:uuid:")]
    assert lab["identifier"] == [{"system": ODS_SYSTEM, "value": "RBA11"}]
    reports = resources(bundle, "DiagnosticReport")
    assert header["focus"] == [{"reference": f"urn:uuid:{r['id']}"} for r in reports]


def test_source_endpoint_and_destination_can_be_given(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(oru(), source_endpoint="urn:x:lab", destination_ods="Y99999")
    header = one(bundle, "MessageHeader")
    assert header["source"]["endpoint"] == "urn:x:lab"
    assert header["destination"][0]["endpoint"] == f"{ODS_SYSTEM}|Y99999"


@pytest.mark.parametrize("xon", ["THE SURGERY^^^^^^^^^y01234", "THE SURGERY^^y01234"])
def test_ods_codes_written_in_lower_case_are_upper_case_in_the_bundle(
    mapping: ModuleType, xon: str
) -> None:
    raw = oru().replace(b"THE SURGERY^^^^^^^^^A81001", xon.encode()).replace(b"|699X0|", b"|rba11|")
    assert mapping.practice_ods(raw) == "Y01234"
    bundle = mapping.oru_to_bundle(raw)
    header = one(bundle, "MessageHeader")
    (destination,) = header["destination"]
    assert destination["endpoint"] == f"{ODS_SYSTEM}|Y01234"
    assert header["source"]["endpoint"] == f"{ODS_SYSTEM}|RBA11"
    organisations = {o["id"]: o for o in resources(bundle, "Organization")}
    practice = organisations[destination["receiver"]["reference"].removeprefix("urn:uuid:")]
    assert practice["identifier"] == [{"system": ODS_SYSTEM, "value": "Y01234"}]
    assert practice["name"] == "THE SURGERY"
    lab = organisations[header["sender"]["reference"].removeprefix("urn:uuid:")]
    assert lab["identifier"] == [{"system": ODS_SYSTEM, "value": "RBA11"}]
    given = mapping.oru_to_bundle(oru(), destination_ods="y99999")
    assert one(given, "MessageHeader")["destination"][0]["endpoint"] == f"{ODS_SYSTEM}|Y99999"


def test_without_ods_codes_the_parties_are_left_out(mapping: ModuleType) -> None:
    raw = oru().replace(b"|LAB|699X0|", b"|LAB||").replace(b"THE SURGERY^^^^^^^^^A81001", b"")
    bundle = mapping.oru_to_bundle(raw)
    header = one(bundle, "MessageHeader")
    assert "destination" not in header and "sender" not in header
    assert header["source"] == {"name": "LAB", "endpoint": "urn:tie:hl7v2:LAB"}
    assert resources(bundle, "Organization") == []


@pytest.mark.parametrize(
    ("name", "ods"),
    [
        (NHS, "R0A"),
        (OURS_V251, "A81001"),
        (OURS_V23, "B82005"),
        (OURS_V24, "C84001"),
        (GHH_V24, None),
    ],
)
def test_practice_ods_reads_orc_21(mapping: ModuleType, name: str, ods: str | None) -> None:
    assert mapping.practice_ods(sample(name)) == ods


def test_patient_with_nhs_number_and_local_mrn(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(NHS))
    patient = one(bundle, "Patient")
    assert patient["identifier"][0] == {"system": NHS_SYSTEM, "value": "9449305552"}
    mrn = patient["identifier"][1]
    assert mrn["value"] == "633" and mrn["type"]["coding"][0]["code"] == "MR"
    assert mrn["assigner"] == {"display": "R0A"}
    assert "meta" not in patient
    assert patient["name"] == [{"family": "CHISLETT", "given": ["Octavia"], "suffix": ["Miss"]}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "2008-09-20")
    assert patient["address"][0]["postalCode"] == "KT19 0ST"
    assert mapping.bundle_flags(bundle) != ["nhs-number-missing"]


@pytest.mark.parametrize(
    "pid3",
    [
        "943 476 5919^^^NHS^NH",
        "9434765919^^^^NHSNMBR",
        "9434765919^^^NHS",
        "M1^^^RA9^MR~9434765919^^^NHS^NH",
    ],
)
def test_nhs_number_is_recognised_by_authority_or_type(mapping: ModuleType, pid3: str) -> None:
    patient = one(mapping.oru_to_bundle(oru(pid=f"PID|1||{pid3}||DOE^J")), "Patient")
    assert patient["identifier"][0] == {"system": NHS_SYSTEM, "value": "9434765919"}


@pytest.mark.parametrize("name", [OURS_V23, MAYO_V23, GHH_V24])
def test_a_missing_nhs_number_is_flagged_never_invented(mapping: ModuleType, name: str) -> None:
    bundle = mapping.oru_to_bundle(sample(name))
    patient = one(bundle, "Patient")
    assert all(i.get("system") != NHS_SYSTEM for i in patient["identifier"])
    assert patient["meta"]["tag"][0]["system"] == FLAGS
    assert patient["meta"]["tag"][0]["code"] == "nhs-number-missing"
    assert "nhs-number-missing" in mapping.bundle_flags(bundle)


def test_an_nhs_number_failing_its_check_digit_is_left_out_and_flagged(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(OURS_V24))
    patient = one(bundle, "Patient")
    assert [i["value"] for i in patient["identifier"]] == ["R998877"]
    assert mapping.bundle_flags(bundle) == ["nhs-number-missing", "nhs-number-invalid"]


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("9449305552", True),
        ("9434765919", True),
        ("9434765910", False),
        ("943476591", False),
        ("94347659X9", False),
        ("1000000010", False),
    ],
)
def test_nhs_number_modulus_11(number: str, valid: bool) -> None:
    mappings.mount(ROOT / "mappings")
    parties = importlib.import_module("tie_mappings.v2_to_fhir.parties")
    assert parties.valid_nhs_number(number) is valid


def test_patient_repeated_names_and_phones(mapping: ModuleType) -> None:
    patient = one(mapping.oru_to_bundle(sample(OURS_V251)), "Patient")
    assert [(n.get("use"), n["family"]) for n in patient["name"]] == [
        ("official", "SMITH"),
        ("maiden", "JONES"),
    ]
    assert patient["name"][0]["given"] == ["Jane", "Anne"]
    assert patient["telecom"] == [  # PID-13 with no use code: a phone, no use
        {"system": "phone", "value": "01823 000000"},
        {"system": "phone", "value": "07700 900000"},
    ]


@pytest.mark.parametrize(
    ("xtn", "expected"),
    [
        ("01823000000^PRN^PH", {"system": "phone", "value": "01823000000", "use": "home"}),
        ("01823111111^WPN^PH", {"system": "phone", "value": "01823111111", "use": "work"}),
        ("07700900000^PRN^CP", {"system": "phone", "value": "07700900000", "use": "mobile"}),
        ("07700900001^PRS", {"system": "phone", "value": "07700900001", "use": "mobile"}),
        ("^NET^Internet^jane@example.org", {"system": "email", "value": "jane@example.org"}),
        ("^^Internet^jane@example.org", {"system": "email", "value": "jane@example.org"}),
        ("01632960000^^BP", {"system": "pager", "value": "01632960000"}),
        ("01632960001^BPN", {"system": "pager", "value": "01632960001"}),
        ("01823222222^PRN^FX", {"system": "fax", "value": "01823222222", "use": "home"}),
        ("01823333333^ZZZ^PH", {"system": "phone", "value": "01823333333"}),  # unknown: no use
        ("^PRN^PH^^^^^^^^^01823444444", {"system": "phone", "value": "01823444444", "use": "home"}),
        ("^PRN^PH", None),  # no number: left out
    ],
)
def test_pid_13_telecom_system_and_use(
    mapping: ModuleType, xtn: str, expected: dict[str, str] | None
) -> None:
    pid = f"PID|1||9449305552^^^NHS^NH||DOE^John||19700101|M|||||{xtn}"
    patient = one(mapping.oru_to_bundle(oru(pid=pid)), "Patient")
    assert patient.get("telecom") == ([expected] if expected else None)


@pytest.mark.parametrize(
    ("xtn", "expected"),
    [
        ("01823555555", {"system": "phone", "value": "01823555555", "use": "work"}),
        (
            "^NET^Internet^j.doe@nhs.net",
            {"system": "email", "value": "j.doe@nhs.net", "use": "work"},
        ),
        ("07700900002^WPN^CP", {"system": "phone", "value": "07700900002", "use": "mobile"}),
    ],
)
def test_pid_14_is_the_work_telecom(
    mapping: ModuleType, xtn: str, expected: dict[str, str]
) -> None:
    pid = f"PID|1||9449305552^^^NHS^NH||DOE^John||19700101|M|||||01823000000^PRN^PH|{xtn}"
    patient = one(mapping.oru_to_bundle(oru(pid=pid)), "Patient")
    home = {"system": "phone", "value": "01823000000", "use": "home"}
    assert patient["telecom"] == [home, expected]


def test_unreadable_dates_are_left_out(mapping: ModuleType) -> None:
    patient = one(mapping.oru_to_bundle(sample(MAYO_V23)), "Patient")  # PID-7 is "DOB"
    assert "birthDate" not in patient


def test_practitioner_gmc_code_once_for_several_orders(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(OURS_V251))
    practitioner = one(bundle, "Practitioner")
    assert practitioner["identifier"] == [
        {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "G1234567"}
    ]
    assert practitioner["name"] == [{"family": "Patel", "given": ["Anita"], "prefix": ["Dr"]}]
    requesters = {r["requester"]["reference"] for r in resources(bundle, "ServiceRequest")}
    assert requesters == {f"urn:uuid:{practitioner['id']}"}


def test_practitioner_without_gmc_keeps_a_plain_identifier(mapping: ModuleType) -> None:
    practitioner = one(mapping.oru_to_bundle(sample(MAYO_V23)), "Practitioner")  # OBR-16 only
    assert practitioner["identifier"] == [{"value": "90111"}]


# --- orders, reports, specimens ---------------------------------------------------------------


def test_service_request_carries_placer_and_filler_numbers(mapping: ModuleType) -> None:
    request = one(mapping.oru_to_bundle(sample(NHS)), "ServiceRequest")
    placer, filler = request["identifier"]
    assert (placer["type"]["coding"][0]["code"], placer["value"]) == ("PLAC", "1601737")
    assert (filler["type"]["coding"][0]["code"], filler["value"]) == ("FILL", "1001166717")
    assert placer["assigner"] == {"display": "R0A"}
    assert (request["status"], request["intent"]) == ("completed", "order")
    assert request["code"]["coding"] == [
        {
            "system": "https://fhir.nhs.uk/CodeSystem/England-GenomicTestDirectory",
            "code": "R240.1",
            "display": "Diagnostic testing for known variant(s)",
        }
    ]


@pytest.mark.parametrize(
    ("name", "system"),
    [
        ("LN", "http://loinc.org"),
        ("SCT", "http://snomed.info/sct"),
        ("SNM", "http://snomed.info/sct"),
        ("snomed", "http://snomed.info/sct"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("READ2", "http://read.info/readv2"),
        ("CTV3", "http://read.info/ctv3"),
        (
            "England-GenomicTestDirectory",
            "https://fhir.nhs.uk/CodeSystem/England-GenomicTestDirectory",
        ),
        ("HL70074", "http://terminology.hl7.org/CodeSystem/v2-0074"),
        ("L", "urn:tie:v2-coding-system:L"),
        ("99zzz", "urn:tie:v2-coding-system:99zzz"),
        ("WinPath Local", "urn:tie:v2-coding-system:WinPath%20Local"),
    ],
)
def test_obr_4_and_obx_3_coding_systems(mapping: ModuleType, name: str, system: str) -> None:
    message = oru(f"OBX|1|NM|K^Potassium^{name}||4.1|||||F").replace(
        b"TEST^Test^L", f"UE^Urea and electrolytes^{name}".encode()
    )
    bundle = mapping.oru_to_bundle(message)
    codings = [
        one(bundle, "ServiceRequest")["code"]["coding"][0],
        one(bundle, "DiagnosticReport")["code"]["coding"][0],
    ]
    assert codings == [{"system": system, "code": "UE", "display": "Urea and electrolytes"}] * 2
    assert one(bundle, "Observation")["code"]["coding"] == [
        {"system": system, "code": "K", "display": "Potassium"}
    ]


def test_a_code_without_a_coding_system_name_has_no_system(mapping: ModuleType) -> None:
    result = observation(mapping, "OBX|1|NM|K^Potassium||4.1|||||F")
    assert result["code"] == {
        "coding": [{"code": "K", "display": "Potassium"}],
        "text": "Potassium",
    }


def test_repeated_filler_numbers_are_all_kept(mapping: ModuleType) -> None:
    report = one(mapping.oru_to_bundle(sample(MAYO_V23)), "DiagnosticReport")
    assert [i["value"] for i in report["identifier"]] == ["23MAYO-265S0173", "M186031683"]


def test_diagnostic_report_fields(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(OURS_V251))
    fbc, ue = resources(bundle, "DiagnosticReport")
    assert (fbc["status"], ue["status"]) == ("final", "corrected")  # OBR-25 F and C
    assert fbc["code"]["coding"][0]["code"] == "FBC"
    assert fbc["category"][0]["coding"][0]["code"] == "HM"
    assert fbc["effectiveDateTime"] == "2024-03-11T10:00:00+00:00"  # OBR-7
    assert fbc["issued"] == "2024-03-12T09:30:00+00:00"  # OBR-22
    assert fbc["conclusion"] == "Film reviewed by biomedical scientist"  # NTE after OBR
    requests = resources(bundle, "ServiceRequest")
    assert fbc["basedOn"] == [{"reference": f"urn:uuid:{requests[0]['id']}"}]


def test_several_obrs_give_a_report_each_with_its_own_results(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(OURS_V251))
    observations = {o["id"]: o for o in resources(bundle, "Observation")}
    fbc, ue = resources(bundle, "DiagnosticReport")
    assert len(fbc["result"]) == 4 and len(ue["result"]) == 8
    for report in (fbc, ue):
        for ref in report["result"]:
            assert (
                observations[ref["reference"].removeprefix("urn:uuid:")]["basedOn"]
                == report["basedOn"]
            )
    assert len(resources(bundle, "ServiceRequest")) == 2
    assert [s["identifier"][0]["value"] for s in resources(bundle, "Specimen")] == ["SP-1", "SP-2"]


def test_report_status_falls_back_to_the_results_when_obr_25_is_empty(mapping: ModuleType) -> None:
    assert one(mapping.oru_to_bundle(sample(NHS)), "DiagnosticReport")["status"] == "final"
    mixed = oru(obx("NM", "1"), obx("NM", "2").replace("|||F", "|||P"))
    assert one(mapping.oru_to_bundle(mixed), "DiagnosticReport")["status"] == "unknown"


def test_specimen_from_spm(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(sample(OURS_V251))
    specimen = resources(bundle, "Specimen")[0]
    assert specimen["identifier"] == [
        {"value": "SP-1", "assigner": {"display": "RBA11"}},
        {"value": "SF-1", "assigner": {"display": "RBA11"}},
    ]
    assert specimen["type"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "119297000",
        "display": "Blood specimen",
    }
    assert specimen["collection"] == {"collectedDateTime": "2024-03-11T10:00:00+00:00"}
    assert specimen["receivedTime"] == "2024-03-11T12:00:00+00:00"
    report = resources(bundle, "DiagnosticReport")[0]
    assert report["specimen"] == [{"reference": f"urn:uuid:{specimen['id']}"}]
    assert specimen["request"] == report["basedOn"]


def test_specimen_from_obr_15_in_v23(mapping: ModuleType) -> None:
    specimen = one(mapping.oru_to_bundle(sample(OURS_V23)), "Specimen")
    assert specimen["type"]["coding"][0]["code"] == "SER"
    assert (
        specimen["type"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0070"
    )
    assert specimen["collection"]["collectedDateTime"] == "2024-01-04T09:00:00+00:00"  # OBR-7
    assert specimen["receivedTime"] == "2024-01-04T12:00:00+00:00"  # OBR-14


def test_no_specimen_without_spm_or_obr_15(mapping: ModuleType) -> None:
    assert resources(mapping.oru_to_bundle(sample(NHS)), "Specimen") == []


# --- observations -----------------------------------------------------------------------------


def observation(mapping: ModuleType, *segments: str, **kwargs: Any) -> dict[str, Any]:
    return one(mapping.oru_to_bundle(oru(*segments, **kwargs)), "Observation")


def test_numbers_reach_the_practice_with_the_digits_the_lab_wrote(mapping: ModuleType) -> None:
    """FHIR decimals keep their precision: 0.50 is not 0.5, and no digit may be rounded away."""
    raw = oru(
        obx("NM", "0.50", units="mmol/L", ref="0.20-4.00"),
        "OBX|2|NM|X2^R^L||0.12345678901234567890|mmol/L|||||F",
        "OBX|3|SN|X3^R^L||^1.50^-^2.50|mmol/L|||||F",
        "OBX|4|NM|X4^R^L||<10.0|mmol/L|>5.10||||F",
    )
    output = mapping.oru_to_fhir_bundle(Message(raw, "lab-results"))
    bundle = json.loads(output.data, parse_float=Decimal)
    first, second, third, fourth = resources(bundle, "Observation")
    assert str(first["valueQuantity"]["value"]) == "0.50"
    assert [str(first["referenceRange"][0][k]["value"]) for k in ("low", "high")] == [
        "0.20",
        "4.00",
    ]
    assert str(second["valueQuantity"]["value"]) == "0.12345678901234567890"
    assert [str(third["valueRange"][k]["value"]) for k in ("low", "high")] == ["1.50", "2.50"]
    assert str(fourth["valueQuantity"]["value"]) == "10.0"
    assert str(fourth["referenceRange"][0]["low"]["value"]) == "5.10"
    assert json.loads(output.data) == mapping.oru_to_bundle(raw)  # the dict compares as floats


def test_numeric_with_units_range_and_flag(mapping: ModuleType) -> None:
    result = observation(mapping, obx("NM", "5.9", units="mmol/L", ref="3.5-5.3", flags="H"))
    unit = {"unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert result["valueQuantity"] == {"value": 5.9, **unit}
    assert result["referenceRange"] == [
        {"low": {"value": 3.5, **unit}, "high": {"value": 5.3, **unit}, "text": "3.5-5.3"}
    ]
    assert result["interpretation"] == [
        {"coding": [{"system": INTERPRETATION, "code": "H", "display": "High"}]}
    ]
    assert result["status"] == "final"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("<5", {"high": {"value": 5}, "text": "<5"}),
        (">60", {"low": {"value": 60}, "text": ">60"}),
        ("-2 - 2", {"low": {"value": -2}, "high": {"value": 2}, "text": "-2 - 2"}),
        ("70_105", {"text": "70_105"}),
        ("Negative", {"text": "Negative"}),
    ],
)
def test_reference_ranges(mapping: ModuleType, ref: str, expected: dict[str, Any]) -> None:
    assert observation(mapping, obx("NM", "1", ref=ref))["referenceRange"] == [expected]


def test_units_unknown_to_ucum_are_kept_as_written(mapping: ModuleType) -> None:
    result = observation(mapping, obx("NM", "3", units="cells/hpf"))
    assert result["valueQuantity"] == {"value": 3, "unit": "cells/hpf"}
    coded = observation(mapping, obx("NM", "3", units="mg/dl"))
    assert coded["valueQuantity"]["code"] == "mg/dL"


def test_numeric_comparators(mapping: ModuleType) -> None:
    assert observation(mapping, obx("NM", "<10"))["valueQuantity"] == {
        "value": 10,
        "comparator": "<",
    }
    assert observation(mapping, obx("NM", ">=90"))["valueQuantity"]["comparator"] == ">="


def test_repeated_abnormal_flags(mapping: ModuleType) -> None:
    result = observation(mapping, obx("NM", "98", flags="L~A~ZZ"))
    assert [
        i.get("coding", [{}])[0].get("code") or i["text"] for i in result["interpretation"]
    ] == [
        "L",
        "A",
        "ZZ",
    ]


def test_text_with_escapes_decoded(mapping: ModuleType) -> None:
    value = r"a\F\b\S\c\T\d\R\e\E\f\.br\line two \X41\ \H\bold\N\ end"
    for kind in ("TX", "FT", "ST"):
        result = observation(mapping, obx(kind, value))
        assert result["valueString"] == "a|b^c&d~e\\f\nline two A bold end"


FHIR_STRING = re.compile(r"[ \r\n\t\S]+")  # FHIR R4 string, as its JSON Schema writes it


def test_control_characters_are_made_fit_for_fhir_strings(mapping: ModuleType) -> None:
    """A page break is a line break; NUL, BEL and a C1 control show as U+FFFD, never dropped
    (cp1252's en dash read as ISO 8859-1 is U+0096: 5-10 must not become 510)."""
    page = r"page one\X0C\page two\X07\ \X00\end 5\X1B\10\XC296\20 \XC2A0\kPa"
    raw = oru(obx("TX", page), "NTE|1||note\\X0B\\two\\X00\\")
    bundle = mapping.oru_to_bundle(raw)
    result = one(bundle, "Observation")
    assert result["valueString"] == "page one\npage two\ufffd \ufffdend 5\ufffd10\ufffd20  kPa"
    assert result["note"] == [{"text": "note\ntwo\ufffd"}]
    strings = [v for v in walk(bundle) if isinstance(v, str)]
    assert all(FHIR_STRING.fullmatch(v) for v in strings)
    assert not [v for v in strings if any(ord(c) < 32 and c not in "\t\r\n" for c in v)]


def test_no_character_fhir_forbids_is_left_in_a_string(mapping: ModuleType) -> None:
    strings = importlib.import_module("tie_mappings.v2_to_fhir.strings")
    for code in (*range(0xD800), *range(0xE000, 0x110000)):
        text = strings.fhir_string(chr(code))
        assert text == "" or FHIR_STRING.fullmatch(text), hex(code)


def test_repeated_text_is_joined_by_lines(mapping: ModuleType) -> None:
    assert observation(mapping, obx("TX", "one~two"))["valueString"] == "one\ntwo"


def test_coded_value(mapping: ModuleType) -> None:
    result = observation(mapping, obx("CWE", "3092008^Staphylococcus aureus^SCT^SA^Staph^L"))
    assert result["valueCodeableConcept"] == {
        "coding": [
            {
                "system": "http://snomed.info/sct",
                "code": "3092008",
                "display": "Staphylococcus aureus",
            },
            {"system": "urn:tie:v2-coding-system:L", "code": "SA", "display": "Staph"},
        ],
        "text": "Staphylococcus aureus",
    }


def test_repeated_coded_values_become_a_component_each(mapping: ModuleType) -> None:
    """The v2-to-FHIR IG's OBX[Observation-Component] map: no value[x] beside them (obs-7)."""
    organisms = "112283007^Escherichia coli^SCT~3092008^Staphylococcus aureus^SCT"
    result = observation(mapping, obx("CE", organisms, flags="A"))
    assert not [key for key in result if key.startswith("value")]
    sct = "http://snomed.info/sct"
    assert result["component"] == [
        {
            "code": result["code"],
            "valueCodeableConcept": {
                "coding": [{"system": sct, "code": "112283007", "display": "Escherichia coli"}],
                "text": "Escherichia coli",
            },
        },
        {
            "code": result["code"],
            "valueCodeableConcept": {
                "coding": [{"system": sct, "code": "3092008", "display": "Staphylococcus aureus"}],
                "text": "Staphylococcus aureus",
            },
        },
    ]
    assert result["interpretation"][0]["coding"][0]["code"] == "A"  # the OBX's, not a component's


def test_a_repeated_numeric_gives_components_with_the_reference_range(mapping: ModuleType) -> None:
    result = observation(mapping, obx("NM", "4.1~4.3", units="mmol/L", ref="3.5-5.3"))
    assert "valueQuantity" not in result and "referenceRange" not in result
    assert [c["valueQuantity"]["value"] for c in result["component"]] == [4.1, 4.3]
    assert all(c["referenceRange"][0]["text"] == "3.5-5.3" for c in result["component"])


MG_DL = {"unit": "mg/dl", "system": "http://unitsofmeasure.org", "code": "mg/dL"}


@pytest.mark.parametrize(
    ("value", "element", "expected"),
    [
        ("^182", "valueQuantity", {"value": 182, **MG_DL}),
        (">^90", "valueQuantity", {"value": 90, "comparator": ">", **MG_DL}),
        ("^1^:^128", "valueRatio", {"numerator": {"value": 1}, "denominator": {"value": 128}}),
        ("^10^-^20", "valueRange", {"low": {"value": 10, **MG_DL}, "high": {"value": 20, **MG_DL}}),
    ],
)
def test_structured_numeric(mapping: ModuleType, value: str, element: str, expected: Any) -> None:
    result = observation(mapping, obx("SN", value, units="mg/dl"))
    assert result[element] == expected


def test_unknown_value_type_is_kept_as_text_and_flagged(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(oru(obx("ZZ", r"opaque^value\T\more")))
    result = one(bundle, "Observation")
    assert result["valueString"] == "opaque^value&more"
    (tag,) = result["meta"]["tag"]
    assert (tag["system"], tag["code"]) == (FLAGS, "unmapped-value-type")
    assert "ZZ" in tag["display"]
    assert "unmapped-value-type" in mapping.bundle_flags(bundle)


def test_a_numeric_that_does_not_parse_is_kept_as_text_and_flagged(mapping: ModuleType) -> None:
    result = observation(mapping, obx("NM", "see comment"))
    assert result["valueString"] == "see comment"
    assert result["meta"]["tag"][0]["code"] == "unparsed-value"


def test_ed_pdf_becomes_the_reports_presented_form(mapping: ModuleType) -> None:
    pdf = b"%PDF-1.4\n%%EOF\n"
    encoded = base64.b64encode(pdf).decode()
    bundle = mapping.oru_to_bundle(
        oru(
            obx("NM", "1"),
            f"OBX|2|ED|11502-2^Laboratory report^LN||^AP^PDF^Base64^{encoded}||||||F",
        )
    )
    report = one(bundle, "DiagnosticReport")
    (form,) = report["presentedForm"]
    assert form["contentType"] == "application/pdf"
    assert base64.b64decode(form["data"]) == pdf
    assert form["size"] == len(pdf) and form["title"] == "Laboratory report"
    assert len(resources(bundle, "Observation")) == 1  # the document is not an Observation


@pytest.mark.parametrize("line_break", ["\\X0D\\\\X0A\\", "\\.br\\", "\\X0A\\"])
def test_ed_base64_wrapped_in_escaped_line_breaks_is_still_the_document(
    mapping: ModuleType, line_break: str
) -> None:
    """MIME-style base64 wraps its lines; in HL7 the breaks can only be written as escapes."""
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 2 + b"\n%%EOF\n"
    encoded = base64.b64encode(pdf).decode()
    wrapped = line_break.join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    bundle = mapping.oru_to_bundle(
        oru(f"OBX|1|ED|11502-2^Laboratory report^LN||^AP^PDF^Base64^{wrapped}||||||F")
    )
    (form,) = one(bundle, "DiagnosticReport")["presentedForm"]
    assert base64.b64decode(form["data"]) == pdf
    assert resources(bundle, "Observation") == []
    assert mapping.bundle_flags(bundle) == []


def test_an_unreadable_ed_is_kept_as_text_and_flagged(mapping: ModuleType) -> None:
    result = one(
        mapping.oru_to_bundle(sample(NHS)), "Observation"
    )  # base64 cut short: "JVBERi0x..."
    assert result["valueString"] == "MOL^IM^PDF^Base64^JVBERi0x..."
    assert result["meta"]["tag"][0]["code"] == "invalid-embedded-document"
    assert "presentedForm" not in one(mapping.oru_to_bundle(sample(NHS)), "DiagnosticReport")


def test_an_unreadable_ed_too_long_for_a_fhir_string_is_an_error(mapping: ModuleType) -> None:
    """FHIR strings hold at most 1024*1024 characters: an ED that does not decode cannot be
    kept as text when it is longer; the reason says what the lab must do."""
    value = "MOL^IM^PDF^Base64^JVBERi0x" + "!" * 1024 * 1024  # as the valueString would be
    with pytest.raises(ValueError) as refused:
        mapping.oru_to_bundle(oru(f"OBX|1|ED|R^Report^L||{value}||||||F"))
    assert str(refused.value) == (
        f"OBX 1 (ED, Base64): the embedded document does not decode, and its {len(value):,}"
        " characters are over FHIR's 1,048,576-character string limit, so it cannot go as"
        " text: the laboratory must send it again"
    )


def test_a_large_readable_ed_is_the_reports_document(mapping: ModuleType) -> None:
    """The limit is a string's: an Attachment's base64 data has none."""
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4096
    data = base64.b64encode(pdf).decode()
    assert len(data) > 1024 * 1024
    bundle = mapping.oru_to_bundle(oru(f"OBX|1|ED|R^Report^L||MOL^AP^PDF^Base64^{data}||||||F"))
    (form,) = one(bundle, "DiagnosticReport")["presentedForm"]
    assert base64.b64decode(form["data"]) == pdf


def test_any_string_over_the_fhir_limit_is_refused_with_its_element(mapping: ModuleType) -> None:
    text = "x" * (1024 * 1024 + 1)
    with pytest.raises(ValueError, match=r"string limit: Bundle\.entry\[\d+\]\.resource\."):
        mapping.oru_to_bundle(oru(obx("TX", text)))


def test_observation_status_time_notes_and_references(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(
        oru(
            "OBX|1|NM|X1^R^L||1||||||C|||20240115110000",
            "NTE|1|L|first line",
            "NTE|2|L|",
            "NTE|3|L|third \\T\\ last",
        )
    )
    result = one(bundle, "Observation")
    assert result["status"] == "corrected"
    assert result["effectiveDateTime"] == "2024-01-15T11:00:00+00:00"  # OBX-14 over OBR-7
    assert result["note"] == [{"text": "first line\n\nthird & last"}]
    assert result["subject"] == {"reference": f"urn:uuid:{one(bundle, 'Patient')['id']}"}
    assert result["performer"] == [one(bundle, "MessageHeader")["sender"]]


@pytest.mark.parametrize(("name", "version"), [(MAYO_V23, "2.3"), (GHH_V24, "2.4"), (NHS, "2.5.1")])
def test_each_version_is_walked_by_its_groups(mapping: ModuleType, name: str, version: str) -> None:
    assert Message(sample(name), "x").get("MSH-12") == version
    bundle = mapping.oru_to_bundle(sample(name))
    report = one(bundle, "DiagnosticReport")
    assert len(report.get("result", [])) == len(resources(bundle, "Observation"))


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1"])
def test_the_same_result_maps_alike_in_every_version(mapping: ModuleType, version: str) -> None:
    raw = oru(obx("NM", "5.9", units="mmol/L", ref="3.5-5.3", flags="H"), version=version)
    result = one(mapping.oru_to_bundle(raw), "Observation")
    assert result["valueQuantity"]["value"] == 5.9
    assert result["interpretation"][0]["coding"][0]["code"] == "H"


def test_a_segment_the_structure_has_no_place_for_is_an_error_not_a_loss(
    mapping: ModuleType,
) -> None:
    with pytest.raises(ValueError, match="EVN"):
        mapping.oru_to_bundle(oru(obx("NM", "1"), "EVN|R01|20240115"))


def test_z_segments_are_left_out_and_flagged_by_default(mapping: ModuleType) -> None:
    """Real labs send Z segments anywhere; the result still reaches the practice, and the
    Bundle and the message say which local segments it does not carry."""
    plain = mapping.oru_to_bundle(oru(obx("NM", "1")))
    raw = oru(obx("NM", "1"), "ZDS|1.2.3^TIE^Application^DICOM", "ZPI|1|x", "ZDS|2")
    raw = raw.replace(b"\rORC|", b"\rZPI|before the order\rORC|")
    bundle = mapping.oru_to_bundle(raw)
    assert bundle["meta"]["tag"] == [
        {
            "system": FLAGS,
            "code": f"not-mapped-{name.lower()}",
            "display": f"{name} segment not mapped: local data the practice does not receive",
        }
        for name in ("ZPI", "ZDS")
    ]
    assert mapping.bundle_flags(bundle) == ["not-mapped-zpi", "not-mapped-zds"]
    assert bundle["entry"] == plain["entry"], "the rest of the result is mapped as without them"
    message = Message(raw, "lab-results")
    mapping.oru_to_fhir_bundle(message)
    assert message.flags == ["not-mapped-zpi", "not-mapped-zds"], "stored with the message"


# Segments of ORU^R01 the mapping does not carry, by version, where the structure puts them:
# after MSH, after PID, after OBR and after the OBX. Each comes back as not-mapped-<name>.
LEFT_OUT = {
    "2.3": ("", "PD1|||THE SURGERY^^A81001\rPV1|1|O", "", "CTI|T1"),
    "2.4": (
        "",
        "PD1|||THE SURGERY^^A81001\rNK1|1|DOE^Jane|SPO\rPV1|1|O\rPV2|||^check",
        "CTD|EP|DOE^Jane",
        "FT1|1\rCTI|T1",
    ),
    "2.5.1": (
        "SFT|LabSoft^^^^^^^^^^X|1.0|LabSoft|1",
        "PD1|||THE SURGERY^^A81001\rNK1|1|DOE^Jane|SPO\rPV1|1|O\rPV2|||^check",
        "TQ1|1||||||20240115100000\rTQ2|1|S\rCTD|EP|DOE^Jane",
        "FT1|1\rCTI|T1",
    ),
}


@pytest.mark.parametrize("version", sorted(LEFT_OUT))
def test_every_segment_the_mapping_does_not_carry_is_flagged(
    mapping: ModuleType, version: str
) -> None:
    """Not only Z segments: PD1 (the registered GP), NK1, PV1 and the rest the Bundle does
    not carry are named on it and on the message, so none is dropped without a word."""
    after_msh, after_pid, after_obr, after_obx = LEFT_OUT[version]
    plain = oru(obx("NM", "1"), version=version)
    raw = oru(obx("NM", "1"), *after_obx.split("\r"), "DSC|1", version=version)
    raw = raw.replace(b"\rORC|", f"\r{after_pid}\rORC|".encode())
    raw = raw.replace(b"\rOBX|", f"\r{after_obr}\rOBX|".encode()) if after_obr else raw
    raw = raw.replace(b"\rPID|", f"\r{after_msh}\rPID|".encode()) if after_msh else raw
    names = [line[:3] for line in raw.decode().split("\r")]
    left_out = [n for n in dict.fromkeys(names) if n not in ("MSH", "PID", "ORC", "OBR", "OBX")]
    bundle = mapping.oru_to_bundle(raw)
    assert mapping.bundle_flags(bundle) == [f"not-mapped-{n.lower()}" for n in left_out]
    assert all(
        tag["display"].startswith(f"{n} segment ")
        for n, tag in zip(left_out, bundle["meta"]["tag"], strict=True)
    )
    assert bundle["entry"] == mapping.oru_to_bundle(plain)["entry"], "the rest as without them"
    message = Message(raw, "lab-results")
    mapping.oru_to_fhir_bundle(message)
    assert message.flags == [f"not-mapped-{n.lower()}" for n in left_out]


@pytest.mark.parametrize(("name", "left_out"), [(NHS, ["pv1"]), (OURS_V251, ["pv1"])])
def test_the_samples_visits_are_flagged_as_not_carried(
    mapping: ModuleType, name: str, left_out: list[str]
) -> None:
    flags = mapping.bundle_flags(mapping.oru_to_bundle(sample(name)))
    assert [f.removeprefix("not-mapped-") for f in flags if f.startswith("not-mapped-")] == (
        left_out
    )


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1"])
def test_notes_on_the_patient_are_flagged_as_not_mapped(mapping: ModuleType, version: str) -> None:
    """NTE after PID has no place in an R4 Patient (and is no report's conclusion): the
    Patient says the practice did not receive it, and the message is flagged."""
    pid = "PID|1||9449305552^^^NHS^NH||DOE^John||19700101|M"
    raw = oru(obx("NM", "1"), version=version, pid=f"{pid}\rNTE|1|L|Patient is on warfarin")
    bundle = mapping.oru_to_bundle(raw)
    assert one(bundle, "Patient")["meta"]["tag"] == [
        {
            "system": FLAGS,
            "code": "not-mapped-patient-nte",
            "display": "NTE after PID (notes on the patient) not mapped: FHIR R4 Patient has no"
            " note; the practice does not receive them",
        }
    ]
    assert "warfarin" not in json.dumps(bundle), "not put where it would mean something else"
    message = Message(raw, "lab-results")
    mapping.oru_to_fhir_bundle(message)
    assert message.flags == ["not-mapped-patient-nte"]
    blank = oru(obx("NM", "1"), version=version, pid=f"{pid}\rNTE|1|L|")
    assert "meta" not in one(mapping.oru_to_bundle(blank), "Patient"), "an empty NTE says nothing"


def test_a_result_naming_no_practice_is_an_error_for_the_gp_route(mapping: ModuleType) -> None:
    """The gp destination takes every result not for the trust: one whose ORC-21 names no
    practice would reach nobody, so it is an error with the reason, never filtered."""
    routing = importlib.import_module("tie_mappings.pathology_routing")
    raw = oru(obx("NM", "1")).replace(b"THE SURGERY^^^^^^^^^A81001", b"THE SURGERY")
    with pytest.raises(ValueError, match=r"no one would receive this result: MSH-6 \(A81001\)"):
        routing.gp_bundle(Message(raw, "lab-results"), None)
    with pytest.raises(ValueError, match="ORC-21 names no ordering practice"):
        routing.gp_bundle_refusing_z_segments(Message(raw, "lab-results"), None)
    assert routing.gp_bundle(Message(oru(obx("NM", "1")), "lab-results"), None).body


def test_z_segments_can_be_refused(mapping: ModuleType) -> None:
    raw = oru(obx("NM", "1"), "ZDS|1.2.3^TIE^Application^DICOM")
    with pytest.raises(ValueError, match="Z segments ZDS: their local data would not reach"):
        mapping.oru_to_bundle(raw, z_segments="error")
    with pytest.raises(ValueError, match="ZDS"):
        mapping.oru_to_fhir_bundle(Message(raw, "lab-results"), z_segments="error")
    routing = importlib.import_module("tie_mappings.pathology_routing")
    with pytest.raises(ValueError, match="ZDS"):  # the transform a channel names to refuse them
        routing.gp_bundle_refusing_z_segments(Message(raw, "lab-results"), None)
    assert "meta" not in mapping.oru_to_bundle(oru(obx("NM", "1")), z_segments="error")


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5.1"])
def test_each_patients_results_stay_with_that_patient(mapping: ModuleType, version: str) -> None:
    """A second PID after the first patient's OBX starts that patient's results."""
    raw = oru(
        obx("NM", "1"),
        "PID|2||9434765919^^^NHS^NH||ROE^Jane||19800101|F",
        "ORC|RE|P2^A81001|F2^699X0||CM||||||||||||||||THE SURGERY^^^^^^^^^A81001",
        "OBR|1|P2^A81001|F2^699X0|TEST^Test^L|||20240115100000",
        "OBX|1|NM|X1^Result^L||2||||||F",
        version=version,
    )
    bundle = mapping.oru_to_bundle(raw)
    john, jane = resources(bundle, "Patient")
    assert (john["name"][0]["family"], jane["name"][0]["family"]) == ("DOE", "ROE")
    owner = {f"urn:uuid:{p['id']}": p["name"][0]["family"] for p in (john, jane)}
    values = {
        owner[o["subject"]["reference"]]: o["valueQuantity"]["value"]
        for o in resources(bundle, "Observation")
    }
    assert values == {"DOE": 1, "ROE": 2}
    reports = resources(bundle, "DiagnosticReport")
    assert [owner[r["subject"]["reference"]] for r in reports] == ["DOE", "ROE"]


def test_results_for_two_practices_in_one_message_are_refused(mapping: ModuleType) -> None:
    """The channel sends the Bundle to every practice ORC-21 names: neither may get the other's."""
    second_order = (
        "ORC|RE|P2^Y05678|F2^699X0||CM||||||||||||||||HILLSIDE^^^^^^^^^Y05678",
        "OBR|2|P2^Y05678|F2^699X0|TEST^Test^L|||20240115100000",
        obx("NM", "2"),
    )
    with pytest.raises(ValueError, match=r"more than one ordering practice \(A81001, Y05678\)"):
        mapping.oru_to_bundle(oru(obx("NM", "1"), *second_order))
    # One practice written twice (XON-10 in one order, XON-3 in another, any case) is one.
    same = [part.replace("Y05678", "a81001") for part in second_order]
    same[0] = same[0].replace("^^^^^^^^^a81001", "^^a81001")
    assert mapping.ordering_practices(oru(obx("NM", "1"), *same)) == ["A81001"]
    bundle = mapping.oru_to_bundle(oru(obx("NM", "1"), *same))
    assert len(resources(bundle, "DiagnosticReport")) == 2
    # A caller that names the practice itself decides.
    mapping.oru_to_bundle(oru(obx("NM", "1"), *second_order), destination_ods="A81001")


@pytest.mark.parametrize("offset", ["+2500", "+0160", "-1500", "+1430"])
def test_a_time_with_an_offset_no_zone_has_is_left_out_not_an_error(
    mapping: ModuleType, offset: str
) -> None:
    """A value that is not a time is left out (here OBX-14, so OBR-7 is used instead)."""
    bundle = mapping.oru_to_bundle(oru(f"OBX|1|NM|X1^R^L||1||||||F|||20240115110000{offset}"))
    assert one(bundle, "Observation")["effectiveDateTime"] == "2024-01-15T10:00:00+00:00"
    later = oru("OBX|1|NM|X1^R^L||1||||||F|||20240115110000+1400")
    assert one(mapping.oru_to_bundle(later), "Observation")["effectiveDateTime"] == (
        "2024-01-15T11:00:00+14:00"
    )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("ORU^R30^ORU_R30", "MSH-9 is ORU^R30: the mapping reads ORU^R01 only"),
        ("ORU^R32", "MSH-9 is ORU^R32: the mapping reads ORU^R01 only"),
        ("ORU", "MSH-9 is ORU: the mapping reads ORU^R01 only"),
    ],
)
def test_another_oru_event_is_refused_not_sent_empty(
    mapping: ModuleType, kind: str, reason: str
) -> None:
    """The channel passes every ORU: one the mapping cannot read must not reach the GP as a
    Bundle with no patient and no result."""
    raw = oru(obx("NM", "1")).replace(b"ORU^R01^ORU_R01", kind.encode())
    with pytest.raises(ValueError, match=re.escape(reason)):
        mapping.oru_to_bundle(raw)


def test_a_result_message_without_any_order_is_refused(mapping: ModuleType) -> None:
    raw = (
        b"MSH|^~\\&|LAB|699X0|GP|A81001|20240115120000||ORU^R01^ORU_R01|C|P|2.5.1\rPID|1||X^^^L^MR"
    )
    with pytest.raises(ValueError, match="no result in the message"):
        mapping.oru_to_bundle(raw)


def test_an_nhs_number_labelled_by_its_oid_is_the_nhs_number(mapping: ModuleType) -> None:
    """CX-4 may name the NHS number by universal id only (HD ``&oid&ISO``), with no CX-5."""
    pid = "PID|1||M1^^^RA9^MR~9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO||DOE^John"
    bundle = mapping.oru_to_bundle(oru(obx("NM", "1"), pid=pid))
    patient = one(bundle, "Patient")
    assert patient["identifier"][0] == {"system": NHS_SYSTEM, "value": "9434765919"}
    assert "nhs-number-missing" not in mapping.bundle_flags(bundle)


def test_a_unit_with_micro_as_a_latin_1_hex_escape_keeps_its_ucum_code(
    mapping: ModuleType,
) -> None:
    result = observation(mapping, obx("NM", "85", units="\\XB5\\mol/L", ref="45-84"))
    assert result["valueQuantity"] == {
        "value": 85,
        "unit": "µmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "umol/L",
    }


@pytest.mark.parametrize(
    ("hl7", "fhir"),
    [
        ("20260329005959", "2026-03-29T00:59:59+00:00"),  # the last second of GMT
        ("20260329013000", "2026-03-29T02:30:00+01:00"),  # in the gap: moved on by the hour
        ("202603290100", "2026-03-29T02:00:00+01:00"),
        ("20260329020000", "2026-03-29T02:00:00+01:00"),  # the first time of BST
        ("20261025013000", "2026-10-25T01:30:00+01:00"),  # twice that night: the first (BST)
        ("20261025023000", "2026-10-25T02:30:00+00:00"),
        ("20260329013000+0000", "2026-03-29T01:30:00+00:00"),  # an offset given is kept
    ],
)
def test_local_times_around_daylight_saving_changes(
    mapping: ModuleType, hl7: str, fhir: str
) -> None:
    """A spring-forward time (01:00-02:00 Europe/London) does not exist: it is not written
    as 01:30+00:00 beside real local times, but as the local time of the same instant."""
    raw = oru(obx("NM", "1")).replace(b"|TEST^Test^L|||20240115100000", f"|T^T^L|||{hl7}".encode())
    assert one(mapping.oru_to_bundle(raw), "DiagnosticReport")["effectiveDateTime"] == fhir


def test_times_without_offset_are_read_in_the_given_zone(mapping: ModuleType) -> None:
    bundle = mapping.oru_to_bundle(oru(obx("NM", "1")), timezone="America/New_York")
    assert bundle["timestamp"] == "2024-01-15T12:00:00-05:00"
    assert one(bundle, "Observation")["effectiveDateTime"] == "2024-01-15T10:00:00-05:00"
