"""Destination transforms of the pathology channels (channels/lab-results.yaml)."""

from __future__ import annotations

from tie_mappings.pathology_fhir import ZSegments, ordering_practices, oru_to_fhir_bundle

from router.message import Message, Output


def gp_bundle(message: Message, _received: Output) -> Output:
    """The result as a FHIR R4 message Bundle for the ordering GP practice (sent over MESH).

    Segments the Bundle does not carry (PV1, PD1..., Z segments) are left out and flagged
    ``not-mapped-<name>`` (e.g. ``not-mapped-pv1``, ``not-mapped-zds``).
    """
    return _for_practice(message, "not-mapped")


def gp_bundle_refusing_z_segments(message: Message, _received: Output) -> Output:
    """As ``gp_bundle``, but a result with a Z segment is an error: for a laboratory whose Z
    segments carry what the practice must see (docs/pathology.md#z-segments)."""
    return _for_practice(message, "error")


def _for_practice(message: Message, z_segments: ZSegments) -> Output:
    """The Bundle; a result that is not the trust's and names no practice is an error: it
    would reach nobody, and filtering it would hide that from the operator."""
    if not ordering_practices(message.raw):
        raise ValueError(
            f"no one would receive this result: MSH-6 ({message.get('MSH-6.1') or 'empty'})"
            " does not name the trust, and ORC-21 names no ordering practice (XON-10, else"
            " XON-3, the practice's ODS code)"
        )
    return oru_to_fhir_bundle(message, z_segments=z_segments)
