"""Destination transforms of the pathology channels (channels/lab-results.yaml)."""

from __future__ import annotations

from tie_mappings.pathology_fhir import oru_to_fhir_bundle

from router.message import Message, Output


def gp_bundle(message: Message, _received: Output) -> Output:
    """The result as a FHIR R4 message Bundle for the ordering GP practice (sent over MESH).

    Z segments are left out and flagged ``not-mapped-<name>`` (e.g. ``not-mapped-zds``).
    """
    return oru_to_fhir_bundle(message)


def gp_bundle_refusing_z_segments(message: Message, _received: Output) -> Output:
    """As ``gp_bundle``, but a result with a Z segment is an error: for a laboratory whose Z
    segments carry what the practice must see (docs/pathology.md#z-segments)."""
    return oru_to_fhir_bundle(message, z_segments="error")
