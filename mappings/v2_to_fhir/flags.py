"""Flags on mapped resources: what the mapping could not carry over as the lab meant it.

A flag is a ``meta.tag`` coding of the system ``FLAGS`` on the resource concerned, so the
receiver sees it and the channel can route or search on it (``bundle_flags``).
"""

from __future__ import annotations

from typing import Any

FLAGS = "urn:tie:pathology-flag"

KNOWN = {
    "nhs-number-missing": "No valid NHS number in PID-3",
    "nhs-number-invalid": "PID-3 has an NHS number that fails its check digit; it is left out",
    "unmapped-value-type": "OBX value type not mapped; the value is kept as text",
    "unparsed-value": "OBX value does not parse as its type; the value is kept as text",
    "invalid-embedded-document": "OBX ED value is not a readable document; kept as text",
    "not-mapped-patient-nte": (
        "NTE after PID (notes on the patient) not mapped: FHIR R4 Patient has no note;"
        " the practice does not receive them"
    ),
}


def flag(code: str, display: str | None = None) -> dict[str, str]:
    return {"system": FLAGS, "code": code, "display": display or KNOWN[code]}


def not_mapped(what: str, display: str | None = None) -> dict[str, str]:
    """The flag of content the practice will not receive: ``not-mapped-zds`` for a ZDS."""
    return flag(f"not-mapped-{what.lower()}", display)


def flags_of(resources: list[dict[str, Any]]) -> list[str]:
    """The distinct flag codes on ``resources``, in order of first appearance."""
    found: list[str] = []
    for resource in resources:
        for tag in resource.get("meta", {}).get("tag", []):
            if tag.get("system") == FLAGS and tag["code"] not in found:
                found.append(tag["code"])
    return found
