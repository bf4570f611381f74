"""Field paths in channel files: HL7 v2 (``PID-3.1``) or FHIR (``Patient.identifier.value``)."""

from __future__ import annotations

from router.fhir import path as fhir_path
from router.hl7v2.path import parse_path


def check_field_path(path: str) -> str:
    """``path`` if it is a valid HL7 v2 or FHIR path; ValueError explains the likelier one."""
    if fhir_path.looks_like_fhir(path):
        fhir_path.parse(path)
        return path
    parse_path(path)
    return path
