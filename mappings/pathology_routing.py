"""Destination transforms of the pathology channels (channels/lab-results.yaml)."""

from __future__ import annotations

from tie_mappings.pathology_fhir import oru_to_fhir_bundle

from router.message import Message, Output


def gp_bundle(message: Message, _received: Output) -> Output:
    """The result as a FHIR R4 message Bundle for the ordering GP practice (sent over MESH)."""
    return oru_to_fhir_bundle(message)
