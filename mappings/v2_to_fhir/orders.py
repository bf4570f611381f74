"""One order group (ORC/OBR) as a ServiceRequest, a DiagnosticReport and its Specimens."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from .datatypes import V2_TABLE, code, codeable_concept, fhir_datetime, fhir_instant
from .segments import Composite, Segment

# ORC-5 (HL7 table 0038) -> ServiceRequest.status
_ORDER_STATUS = {
    "CM": "completed",
    "CA": "revoked",
    "DC": "revoked",
    "HD": "on-hold",
    "IP": "active",
    "SC": "active",
    "A": "active",
}
# OBR-25 (HL7 table 0123) -> DiagnosticReport.status
_REPORT_STATUS = {
    "O": "registered",
    "I": "registered",
    "S": "partial",
    "A": "partial",
    "P": "preliminary",
    "R": "preliminary",
    "C": "corrected",
    "F": "final",
    "X": "cancelled",
}
# OBX-11 -> DiagnosticReport.status, when OBR-25 is empty and every OBX agrees
_RESULT_STATUS = {"F": "final", "C": "corrected", "P": "preliminary", "R": "preliminary"}
_IDENTIFIER_TYPES = {"PLAC": "Placer Identifier", "FILL": "Filler Identifier"}


def order_identifiers(orc: Segment | None, obr: Segment, kind: str) -> list[dict[str, Any]]:
    """Placer (ORC-2, else OBR-2) or filler (ORC-3, else OBR-3) order numbers, every repetition."""
    number = 2 if kind == "PLAC" else 3
    reps = (orc.repetitions(number) if orc else []) or obr.repetitions(number)
    return [_identifier(rep, kind) for rep in reps if rep.get(1)]


def _identifier(rep: Composite, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": {
            "coding": [
                {"system": V2_TABLE.format(203), "code": kind, "display": _IDENTIFIER_TYPES[kind]}
            ]
        },
        "value": rep.get(1),
    }
    namespace = rep.get(2) or rep.get(3)
    if namespace:
        out["assigner"] = {"display": namespace}
    return out


def test_code(obr: Segment) -> dict[str, Any]:
    """OBR-4, the test ordered (CodeableConcept is required in both resources)."""
    return codeable_concept(obr.field(4)) or {"text": "OBR-4 is empty"}


def service_request(
    orc: Segment | None,
    obr: Segment,
    resource_id: str,
    subject: dict[str, str],
    requester: dict[str, str] | None,
    zone: ZoneInfo,
) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "ServiceRequest", "id": resource_id}
    identifiers = order_identifiers(orc, obr, "PLAC") + order_identifiers(orc, obr, "FILL")
    if identifiers:
        resource["identifier"] = identifiers
    status = _ORDER_STATUS.get(((orc.get(5) if orc else None) or "").upper())
    resource["status"] = status or "unknown"
    resource["intent"] = "order"
    resource["code"] = test_code(obr)
    resource["subject"] = subject
    authored = fhir_datetime(orc.get(9) if orc else None, zone)
    if authored:
        resource["authoredOn"] = authored
    if requester:
        resource["requester"] = requester
    return resource


def report_status(obr: Segment, results: list[Segment]) -> str:
    """OBR-25; when empty, the OBX-11 status all the results share; else ``unknown``."""
    status = _REPORT_STATUS.get((obr.get(25) or "").upper())
    if status:
        return status
    found = {_RESULT_STATUS.get((obx.get(11) or "").upper()) for obx in results}
    return found.pop() if len(found) == 1 and None not in found else "unknown"


def diagnostic_report(
    orc: Segment | None,
    obr: Segment,
    obx: list[Segment],
    resource_id: str,
    zone: ZoneInfo,
    *,
    based_on: dict[str, str],
    subject: dict[str, str],
    performer: dict[str, str] | None,
    specimens: list[dict[str, str]],
    results: list[dict[str, str]],
    conclusion: str | None,
    presented_form: list[dict[str, Any]],
) -> dict[str, Any]:
    """The report of one order: ``obx`` are all its OBX (for the status when OBR-25 is empty)."""
    resource: dict[str, Any] = {"resourceType": "DiagnosticReport", "id": resource_id}
    identifiers = order_identifiers(orc, obr, "FILL")
    if identifiers:
        resource["identifier"] = identifiers
    resource["basedOn"] = [based_on]
    resource["status"] = report_status(obr, obx)
    section = obr.get(24)
    if section:
        coding = {"system": V2_TABLE.format(74), "code": code(section)}
        resource["category"] = [{"coding": [coding]}]
    resource["code"] = test_code(obr)
    resource["subject"] = subject
    effective = fhir_datetime(obr.get(7), zone)
    if effective:
        resource["effectiveDateTime"] = effective
    issued = fhir_instant(obr.get(22), zone)
    if issued:
        resource["issued"] = issued
    optional: dict[str, Any] = {
        "performer": [performer] if performer else None,
        "specimen": specimens,
        "result": results,
        "conclusion": conclusion,
        "presentedForm": presented_form,
    }
    resource.update((key, value) for key, value in optional.items() if value)
    return resource


def specimen_from_spm(
    spm: Segment, resource_id: str, subject: dict[str, str], zone: ZoneInfo
) -> dict[str, Any]:
    """SPM: identifier SPM-2 (placer, filler), type SPM-4, collected SPM-17, received SPM-18."""
    resource: dict[str, Any] = {"resourceType": "Specimen", "id": resource_id}
    identifiers = []
    for part in (spm.field(2).component(1), spm.field(2).component(2)):
        if part.get(1):
            entry: dict[str, Any] = {"value": part.get(1)}
            if part.get(2):
                entry["assigner"] = {"display": part.get(2)}
            identifiers.append(entry)
    if identifiers:
        resource["identifier"] = identifiers
    kind = codeable_concept(spm.field(4))
    if kind:
        resource["type"] = kind
    resource["subject"] = subject
    _times(resource, spm.field(17).component(1).get(1), spm.get(18), zone)
    return resource


def specimen_from_obr(
    obr: Segment, resource_id: str, subject: dict[str, str], zone: ZoneInfo
) -> dict[str, Any] | None:
    """OBR-15 (specimen source, v2.3-2.4 style), collected OBR-7, received OBR-14."""
    source = obr.field(15).component(1)  # CE written with subcomponents: code&text&system
    kind = codeable_concept(source) if source else None
    if kind is None:
        return None
    resource: dict[str, Any] = {"resourceType": "Specimen", "id": resource_id, "type": kind}
    resource["subject"] = subject
    _times(resource, obr.get(7), obr.get(14), zone)
    return resource


def _times(
    resource: dict[str, Any], collected: str | None, received: str | None, zone: ZoneInfo
) -> None:
    received_at = fhir_datetime(received, zone)
    if received_at:
        resource["receivedTime"] = received_at
    collected_at = fhir_datetime(collected, zone)
    if collected_at:
        resource["collection"] = {"collectedDateTime": collected_at}
