"""Patient (PID), Practitioner (XCN: GMC code) and Organization (ODS code) resources."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from .datatypes import V2_TABLE, address, code, contact_point, fhir_date, human_name
from .flags import flag, not_mapped
from .observations import note_text
from .segments import Composite, Segment

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
GMC_NUMBER = "https://fhir.hl7.org.uk/Id/gmc-number"
ODS_CODE = "https://fhir.nhs.uk/Id/ods-organization-code"

_GENDER = {"F": "female", "M": "male", "O": "other", "A": "other", "U": "unknown"}
_NAME_USE = {"L": "official", "D": "usual", "M": "maiden", "N": "nickname", "C": "usual"}
_NHS_TYPES = {"NH", "NHSNMBR"}
# The OID of the NHS number (England and Wales), as senders write CX-4 by universal id:
# ``^^^&2.16.840.1.113883.2.1.4.1&ISO``.
NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"


def valid_nhs_number(value: str) -> bool:
    """The modulus 11 check of an NHS number (10 digits, the last a check digit)."""
    if len(value) != 10 or not value.isdigit():
        return False
    total = sum(int(digit) * (10 - i) for i, digit in enumerate(value[:9]))
    check = 11 - total % 11
    return check != 10 and check % 11 == int(value[9])


def _is_nhs(identifier: Composite) -> bool:
    authority = (identifier.get(4) or "").upper()
    kind = (identifier.get(5) or "").upper()
    return authority == "NHS" or identifier.get(4, 2) == NHS_NUMBER_OID or kind in _NHS_TYPES


def patient(
    pid: Segment, resource_id: str, zone: ZoneInfo, notes: list[Segment] | None = None
) -> dict[str, Any]:
    """The Patient: NHS number only when PID-3 labels one and it passes the check digit.

    A missing or failing NHS number is never invented: the Patient is tagged
    ``nhs-number-missing`` (and ``nhs-number-invalid`` when one failed the check).
    ``notes`` (NTE after PID) have no place in an R4 Patient: a Patient with any is
    tagged ``not-mapped-patient-nte``, so the loss is never silent.
    """
    resource: dict[str, Any] = {"resourceType": "Patient", "id": resource_id}
    identifiers: list[dict[str, Any]] = []
    tags: list[dict[str, str]] = []
    nhs_number = None
    for identifier in pid.repetitions(3):
        value = (identifier.get(1) or "").replace(" ", "")
        if not value:
            continue
        if _is_nhs(identifier):
            if valid_nhs_number(value) and nhs_number is None:
                nhs_number = value
                identifiers.insert(0, {"system": NHS_NUMBER, "value": value})
            elif not valid_nhs_number(value):
                tags.append(flag("nhs-number-invalid"))
            continue
        identifiers.append(_local_identifier(identifier))
    if nhs_number is None:
        tags.insert(0, flag("nhs-number-missing"))
    if note_text(notes or []):
        tags.append(not_mapped("patient-nte"))
    if tags:
        resource["meta"] = {"tag": tags}
    if identifiers:
        resource["identifier"] = identifiers
    names = []
    for value in pid.repetitions(5):
        name = human_name(value)
        if name:
            use = _NAME_USE.get((value.get(7) or "").upper())
            names.append({"use": use, **name} if use else name)
    if names:
        resource["name"] = names
    home = [contact_point(xtn) for xtn in pid.repetitions(13)]
    work = [contact_point(xtn, "work") for xtn in pid.repetitions(14)]
    telecom = [point for point in (*home, *work) if point]
    if telecom:
        resource["telecom"] = telecom
    gender = _GENDER.get((pid.get(8) or "").upper())
    if gender:
        resource["gender"] = gender
    birth_date = fhir_date(pid.get(7))
    if birth_date:
        resource["birthDate"] = birth_date
    addresses = [a for a in (address(v) for v in pid.repetitions(11)) if a]
    if addresses:
        resource["address"] = addresses
    return resource


def _local_identifier(identifier: Composite) -> dict[str, Any]:
    """A local identifier (e.g. the hospital MRN): its type and assigning authority as given."""
    out: dict[str, Any] = {}
    kind = identifier.get(5)
    if kind:
        out["type"] = {"coding": [{"system": V2_TABLE.format(203), "code": code(kind)}]}
    out["value"] = (identifier.get(1) or "").strip()
    authority = identifier.get(4)
    if authority:
        out["assigner"] = {"display": authority}
    return out


def practitioner_identifier(xcn: Composite) -> dict[str, str] | None:
    """The XCN's identifier: a GMC number when XCN-9 (assigning authority) says GMC."""
    value = xcn.get(1)
    if not value:
        return None
    authority = (xcn.get(9) or "").upper()
    if authority == "GMC" or (xcn.get(13) or "").upper() == "GMC":
        return {"system": GMC_NUMBER, "value": value}
    return {"value": value}


def practitioner(xcn: Composite, resource_id: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Practitioner", "id": resource_id}
    identifier = practitioner_identifier(xcn)
    if identifier:
        resource["identifier"] = [identifier]
    name = human_name(xcn, family=2)
    if name:
        resource["name"] = [name]
    return resource


def ods_code(text: str) -> str:
    """An ODS code as ODS writes it, upper case: senders write ``y01234`` for ``Y01234``, and
    the directory (which routes on it) already compares without case."""
    return text.strip().upper()


def organization(ods_code: str, resource_id: str, name: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Organization",
        "id": resource_id,
        "identifier": [{"system": ODS_CODE, "value": ods_code}],
    }
    if name:
        resource["name"] = name
    return resource
