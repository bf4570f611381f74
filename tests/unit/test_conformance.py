"""Conformance of what tie emits on the pathology channels (lab-orders, lab-results).

- Every FHIR resource the ORU^R01 mapping emits validates with fhir.resources (R4B models,
  which tie uses for R4), one by one and as the Bundle, also through the engine's own
  FHIR validator.
- Every ACK the MLLP listener builds for these channels passes hl7apy's strict validation
  for the message's version: accepts, store-failure errors and rejects, in original and
  enhanced mode, built with exactly the arguments router/connectors/mllp/listener.py uses.
  Two documented exceptions are pinned down at the end.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
from fhir.resources.R4B import get_fhir_model_class

from router import mappings
from router.fhir.validation import validate
from router.hl7v2 import (
    AckError,
    MshHeader,
    StructureError,
    ack_code,
    build_ack,
    build_reject,
    parse_header,
    validate_strict,
)
from router.message import Message

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "hl7v2"
ORU = sorted(p.name for p in DATA.glob("ORU_R01_*.hl7"))
OML = sorted(p.name for p in DATA.glob("OML_O21_*.hl7"))
# Its MSH-4 and MSH-6 are longer than HD.1 allows; an ACK copies them (see the last test).
INVALID_MSH = "OML_O21_v251_cdc_ochsner.hl7"
VERSIONS = ["2.3", "2.4", "2.5", "2.5.1"]


@pytest.fixture(scope="module")
def pathology_fhir() -> ModuleType:
    mappings.mount(ROOT / "mappings")
    return importlib.import_module("tie_mappings.pathology_fhir")


# --- FHIR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORU)
def test_every_emitted_fhir_resource_validates(pathology_fhir: ModuleType, name: str) -> None:
    message = Message((DATA / name).read_bytes(), "lab-results")
    document = json.loads(pathology_fhir.oru_to_fhir_bundle(message).data)
    for entry in document["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(
            resource
        )  # unknown elements fail
    validate(document, "R4")  # the engine's own check, as a FHIR source would apply it


def test_the_emitted_resource_types_are_those_of_the_mapping_table(
    pathology_fhir: ModuleType,
) -> None:
    bundle = pathology_fhir.oru_to_bundle(
        (DATA / "ORU_R01_tie_v251_gp_two_orders.hl7").read_bytes()
    )
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert kinds == {
        "MessageHeader",
        "Patient",
        "Organization",
        "Practitioner",
        "ServiceRequest",
        "Specimen",
        "DiagnosticReport",
        "Observation",
    }


# --- HL7 v2 ACKs --------------------------------------------------------------------------------


def listener_acks(header: MshHeader) -> dict[str, bytes]:
    """Every ACK the MLLP listener can answer a readable message with."""
    return {
        "accept": build_ack(header, ack_code(header, "accept")),
        "store failure": build_ack(
            header,
            ack_code(header, "error"),
            text="message not stored; please resend",
            error=AckError("207", "OperationalError: database is locked | retry ^ later"),
        ),
        "reject": build_reject("unreadable HL7 v2: MSH-9 has no message code", header),
    }


@pytest.mark.parametrize("mode", ["", "AL", "NE", "ER", "SU"])
@pytest.mark.parametrize("name", [n for n in ORU + OML if n != INVALID_MSH])
def test_every_ack_for_the_pathology_samples_passes_strict_validation(name: str, mode: str) -> None:
    header = replace(parse_header((DATA / name).read_bytes()), accept_ack_type=mode)
    for kind, ack in listener_acks(header).items():
        try:
            validate_strict(ack)
        except StructureError as exc:
            pytest.fail(f"{kind} ACK for {name} (MSH-15 {mode!r}): {exc}\n{ack!r}")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("structure", ["ORU^R01", "ORU^R01^ORU_R01", "OML^O21^OML_O21"])
def test_acks_pass_strict_validation_in_every_version(version: str, structure: str) -> None:
    raw = f"MSH|^~\\&|LAB|699X0|EPR|R0A|20240101120000||{structure}|C-1|P|{version}".encode()
    for mode in ("", "AL"):
        for ack in listener_acks(replace(parse_header(raw), accept_ack_type=mode)).values():
            validate_strict(ack)


def test_ack_texts_with_delimiters_and_long_reasons_stay_conformant() -> None:
    header = parse_header((DATA / "ORU_R01_v23_cdc_epic_mayo.hl7").read_bytes())
    reason = "bad | field ^ comp ~ rep \\ esc & sub\r\nnext line " + "x" * 400
    for version in VERSIONS:
        validate_strict(build_reject(reason, replace(header, version=version)))


def test_exceptions_the_original_message_causes() -> None:
    """An ACK copies the sender's MSH-3..6 and echoes its MSH-10, as HL7 requires.

    Over-long sender names stay over-long, and a message without MSH-10 (refused for
    that) gets a reject with an empty MSA-2: there is no control id to echo.
    """
    header = parse_header((DATA / INVALID_MSH).read_bytes())
    with pytest.raises(StructureError, match="Louisiana Office of Public Health Laboratory"):
        validate_strict(listener_acks(header)["accept"])
    no_id = replace(parse_header((DATA / ORU[0]).read_bytes()), control_id="")
    with pytest.raises(StructureError):
        validate_strict(build_reject("empty MSH-10 (message control id)", no_id))
