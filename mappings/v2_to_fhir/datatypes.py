"""HL7 v2 data types as FHIR R4 data types: times, codes, names, addresses, quantities."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from .decimals import FhirDecimal
from .segments import Composite

V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-{:04d}"
UCUM = "http://unitsofmeasure.org"
# A coding system with no canonical URI keeps its v2 name, so its codes keep their meaning.
V2_CODING_SYSTEM = "urn:tie:v2-coding-system:{}"

_SNOMED_CT = "http://snomed.info/sct"
_ICD_10 = "http://hl7.org/fhir/sid/icd-10"
_READ_V2 = "http://read.info/readv2"
_CTV3 = "http://read.info/ctv3"
# HL7 v2 coding-system names (table 0396, and names NHS senders use), upper-cased, that
# have a canonical FHIR URI. HL7nnnn (an HL7 table) is handled by coding_system().
CODING_SYSTEMS = {
    "LN": "http://loinc.org",
    "SCT": _SNOMED_CT,
    "SNM": _SNOMED_CT,  # the NHS uses SNM for SNOMED CT in v2 messages
    "SNOMED": _SNOMED_CT,
    "UCUM": UCUM,
    "I10": _ICD_10,
    "ICD10": _ICD_10,
    "READ": _READ_V2,
    "READ2": _READ_V2,
    "CTV3": _CTV3,
    "READ3": _CTV3,
    "ENGLAND-GENOMICTESTDIRECTORY": "https://fhir.nhs.uk/CodeSystem/England-GenomicTestDirectory",
}

# XTN-3 equipment type (HL7 table 0202), else XTN-2 use code (table 0201) -> ContactPoint.system
_TELECOM_SYSTEM = {
    "INTERNET": "email",
    "X.400": "email",
    "NET": "email",
    "BP": "pager",
    "BPN": "pager",
    "FX": "fax",
}
# XTN-2 use code -> ContactPoint.use (XTN-3 CP, a cellular phone, is also "mobile")
_TELECOM_USE = {"PRN": "home", "WPN": "work", "PRS": "mobile"}

_TS = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?(?:([+-])(\d{2})(\d{2}))?$"
)
_NUMBER = re.compile(r"^\s*([<>]=?)?\s*([+-]?(\d+\.?\d*|\.\d+))\s*$")


def fhir_datetime(value: str | None, zone: ZoneInfo) -> str | None:
    """An HL7 TS/DTM as a FHIR dateTime at its own precision; None when it is not a time.

    FHIR needs an offset once there is a time: a time without one is the sender's local
    time (``zone``). Minutes and seconds left out by the sender are written as zero. A
    local time in a spring-forward gap (01:30 on the day Europe/London goes from 01:00 to
    02:00) does not exist: it is moved on by the gap (02:30+01:00), the instant a clock not
    yet put forward meant. A time that occurs twice (autumn) is the first (summer time).
    """
    match = _TS.match((value or "").strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    try:
        local = datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
            int(second or 0),
        )  # fmt: skip
    except ValueError:
        return None
    if hour is None:
        return "-".join(p for p in (year, month, day) if p)
    if sign:
        if int(off_m) > 59 or (int(off_h), int(off_m)) > (14, 0):
            return None  # no zone has it (FHIR takes -14:00 to +14:00): not a time
        offset = f"{sign}{off_h}:{off_m}"
    else:
        # fold=0 reads a gap time with the offset before the change; through UTC (astimezone
        # to its own zone is a no-op), that instant is the local time that exists, gap added.
        aware = local.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
        local, offset = aware.replace(tzinfo=None), aware.strftime("%z")
        offset = f"{offset[:3]}:{offset[3:]}"
    return f"{local.strftime('%Y-%m-%dT%H:%M:%S')}{fraction or ''}{offset}"


def fhir_instant(value: str | None, zone: ZoneInfo) -> str | None:
    """An HL7 TS as a FHIR instant, which needs at least the hour; else None."""
    converted = fhir_datetime(value, zone)
    return converted if converted and "T" in converted else None


def fhir_date(value: str | None) -> str | None:
    """The date part of an HL7 DT/TS (e.g. a birth date)."""
    converted = fhir_datetime((value or "")[:8], ZoneInfo("UTC"))
    return converted if converted and "T" not in converted else None


def decimal(value: str | None) -> tuple[str | None, int | FhirDecimal | None]:
    """``(comparator, number)`` of ``"5.2"``, ``"<5"``, ``">=90"``; ``(None, None)`` if not one.

    The number keeps the value as written: an ``int`` when it has no decimal point, else a
    ``FhirDecimal`` that keeps its digits (``"0.50"`` stays ``0.50``, see ``decimals``).
    """
    match = _NUMBER.match(value or "")
    if not match:
        return None, None
    try:
        number = Decimal(match.group(2))
    except InvalidOperation:
        return None, None
    if "." not in match.group(2):
        return match.group(1), int(number)
    return match.group(1), FhirDecimal(number)


def codeable_concept(value: Composite) -> dict[str, Any] | None:
    """A CE/CWE/CNE: identifier^text^system (and the alternate triple in 4-6)."""
    if not value:
        return None
    codings = [c for c in (_coding(value, 1), _coding(value, 4)) if c]
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    text = value.get(2) or value.get(5)
    if text:
        concept["text"] = text
    if not concept:  # a value with no code and no text: keep what it says
        concept["text"] = value.text.strip()
    return concept


def code(value: str) -> str:
    """A FHIR ``code``: no leading, trailing or repeated whitespace."""
    return " ".join(value.split())


def _coding(value: Composite, first: int) -> dict[str, Any] | None:
    identifier, display, system = value.get(first), value.get(first + 1), value.get(first + 2)
    if not identifier:
        return None
    coding: dict[str, Any] = {}
    uri = coding_system(system)
    if uri:
        coding["system"] = uri
    coding["code"] = code(identifier)
    if display:
        coding["display"] = display
    return coding


def coding_system(name: str | None) -> str | None:
    """The FHIR URI of a v2 coding-system name; None only when the sender named none.

    A known name gives its canonical URI; any other (a local ``L``, ``99zzz``) gives
    ``urn:tie:v2-coding-system:<name>``: a code without a system means nothing to a receiver.
    """
    name = (name or "").strip()
    if not name:
        return None
    known = CODING_SYSTEMS.get(name.upper())
    if known:
        return known
    table = re.fullmatch(r"HL7(\d{4})", name.upper())
    if table:
        return V2_TABLE.format(int(table.group(1)))
    return V2_CODING_SYSTEM.format(quote(name, safe=""))


def contact_point(value: Composite, default_use: str | None = None) -> dict[str, str] | None:
    """An XTN as a ContactPoint; ``default_use`` when XTN-2/3 name none (``work`` for PID-14).

    The system comes from XTN-3 (else XTN-2), the use from XTN-2 (``CP`` in XTN-3: mobile);
    an email address is XTN-4, a number XTN-1 (else XTN-12).
    """
    use_code, equipment = (value.get(2) or "").upper(), (value.get(3) or "").upper()
    system = _TELECOM_SYSTEM.get(equipment) or _TELECOM_SYSTEM.get(use_code, "phone")
    text = (value.get(4) if system == "email" else None) or value.get(1) or value.get(12)
    if not text:
        return None
    point = {"system": system, "value": text}
    use = "mobile" if equipment == "CP" else _TELECOM_USE.get(use_code, default_use)
    if use:
        point["use"] = use
    return point


def human_name(value: Composite, family: int = 1) -> dict[str, Any] | None:
    """An XPN (``family`` = 1) or the name part of an XCN (``family`` = 2)."""
    name: dict[str, Any] = {}
    surname = value.get(family)
    if surname:
        name["family"] = surname
    given = [g for g in (value.get(family + 1), value.get(family + 2)) if g]
    if given:
        name["given"] = given
    prefix, suffix = value.get(family + 4), value.get(family + 3)
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name or None


def address(value: Composite) -> dict[str, Any] | None:
    """An XAD: street^other^city^state/county^postcode^country."""
    out: dict[str, Any] = {}
    lines = [line for line in (value.get(1), value.get(2)) if line]
    if lines:
        out["line"] = lines
    for component, element in ((3, "city"), (4, "district"), (5, "postalCode"), (6, "country")):
        part = value.get(component)
        if part:
            out[element] = part
    return out or None


def reference(resource: dict[str, Any]) -> dict[str, str]:
    """A reference to a resource of the same Bundle, by its ``urn:uuid`` full URL."""
    return {"reference": f"urn:uuid:{resource['id']}"}
