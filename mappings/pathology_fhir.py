"""Pathology results (ORU^R01, v2.3 to 2.5.1) as a FHIR R4 message Bundle for GP practices.

The mapping table, flags and examples are in docs/pathology.md. The Bundle is built as
JSON and validated with fhir.resources' R4B models (R4B adds nothing to the resources
used here, so the output is R4). Resource ids are UUIDs derived from MSH-3, MSH-4 and
MSH-10 and each resource's place in the message, so the same message always gives the
same Bundle (golden files, and duplicate checks after a reprocess).
"""

from __future__ import annotations

import uuid
from typing import Any, Literal
from urllib.parse import quote
from zoneinfo import ZoneInfo

from router.fhir import FHIR_JSON
from router.hl7v2.er7 import Er7Message
from router.message import Message, Output

from .v2_to_fhir.datatypes import fhir_datetime, fhir_instant, reference
from .v2_to_fhir.decimals import to_json
from .v2_to_fhir.flags import flags_of, not_mapped
from .v2_to_fhir.groups import OrderGroup, read_result
from .v2_to_fhir.observations import ResultContext, embedded_document, is_document, note_text
from .v2_to_fhir.observations import observation as observation_resource
from .v2_to_fhir.orders import (
    diagnostic_report,
    service_request,
    specimen_from_obr,
    specimen_from_spm,
)
from .v2_to_fhir.parties import ODS_CODE, ods_code, organization, patient, practitioner
from .v2_to_fhir.segments import Composite, Delimiters, Segment
from .v2_to_fhir.strings import MAX_STRING

# MessageHeader.eventCoding: the HL7 v2 event (table 0003), as the HL7 v2-to-FHIR mapping does.
EVENT = {
    "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
    "code": "R01",
    "display": "ORU/ACK - Unsolicited transmission of an observation message",
}
UUID_SYSTEM = "https://tools.ietf.org/html/rfc4122"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:tie:mappings:pathology_fhir")
# What a Z segment (data local to the sender) does to the result: left out and flagged
# ``not-mapped-<name>`` on the Bundle and the message, or the message is an error.
ZSegments = Literal["not-mapped", "error"]
# What each standard segment of ORU^R01 the Bundle does not carry holds (a Z segment: local
# data), for its not-mapped-<name> flag.
LEFT_OUT = {
    "SFT": "the sending software",
    "PD1": "more demographics (the registered GP)",
    "NK1": "next of kin",
    "PV1": "the patient visit",
    "PV2": "more of the patient visit",
    "TQ1": "timing and quantity",
    "TQ2": "timing of related orders",
    "CTD": "contact data",
    "FT1": "a financial transaction",
    "CTI": "a clinical trial",
    "DSC": "a continuation pointer",
}


def oru_to_fhir_bundle(message: Message, *, z_segments: ZSegments = "not-mapped") -> Output:
    """Channel transform: the Bundle as JSON, addressed to the practice ``practice_ods`` finds.

    Each flag (e.g. ``nhs-number-missing``) is stored as a message flag, so
    ``run.py messages --flag nhs-number-missing`` finds the results that carry it; a
    correlation key would wrongly join every such result into one timeline.
    """
    bundle = oru_to_bundle(message.raw, z_segments=z_segments)
    for code in bundle_flags(bundle):
        message.flag(code)
    return Output(to_json(bundle) + "\n", FHIR_JSON)


def oru_to_bundle(
    er7: str | bytes,
    *,
    source_endpoint: str | None = None,
    destination_ods: str | None = None,
    timezone: str = "Europe/London",
    z_segments: ZSegments = "not-mapped",
) -> dict[str, Any]:
    """The FHIR message Bundle of an ORU^R01, validated; raises ValueError if it is not valid.

    ``source_endpoint`` defaults to the lab's ODS code (MSH-4) as ``system|value``;
    ``destination_ods`` (the GP practice) defaults to ``practice_ods``. HL7 times without
    an offset are local times of ``timezone``. Z segments are left out and flagged, or
    (``z_segments="error"``) refused: a receiver never sees them.
    """
    builder = _BundleBuilder(er7, ZoneInfo(timezone), source_endpoint, destination_ods)
    local = builder.result.z_segments
    if local and z_segments == "error":
        raise ValueError(
            f"Z segments {', '.join(local)}: their local data would not reach the practice"
            " (this channel refuses results with Z segments)"
        )
    bundle = builder.build()
    _validate(bundle)
    return bundle


def practice_ods(er7: str | bytes) -> str | None:
    """The ODS code of the ordering facility, upper case: the first ORC-21 with XON-10
    (else XON-3)."""
    message = Er7Message(er7)
    delimiters = Delimiters(message.field_sep, message.encoding, message.codec)
    for text in message.segments:
        if text.startswith("ORC"):
            code = _facility_ods(Segment(text, delimiters).field(21))
            if code:
                return code
    return None


def ordering_practices(er7: str | bytes) -> list[str]:
    """Every distinct ODS code in ORC-21 (XON-10, else XON-3) of every ORC, in order, upper
    case."""
    message = Er7Message(er7)
    delimiters = Delimiters(message.field_sep, message.encoding, message.codec)
    found: list[str] = []
    for text in message.segments:
        if text.startswith("ORC"):
            for facility in Segment(text, delimiters).repetitions(21):
                code = _facility_ods(facility)
                if code and code not in found:
                    found.append(code)
    return found


def _facility_ods(facility: Composite | None) -> str | None:
    """An XON's ODS code: XON-10 (v2.5+), else XON-3 as v2.3/2.4 senders write it."""
    code = (facility.get(10) or facility.get(3)) if facility else None
    return ods_code(code) if code else None


def bundle_flags(bundle: dict[str, Any]) -> list[str]:
    """The flag codes the mapping put on the Bundle and its resources (see docs/pathology.md)."""
    return flags_of([bundle, *(entry["resource"] for entry in bundle.get("entry", []))])


class _BundleBuilder:
    """Collects the resources of one message, each once, in a stable order."""

    def __init__(
        self, er7: str | bytes, zone: ZoneInfo, source_endpoint: str | None, ods: str | None
    ) -> None:
        self.result = read_result(er7)
        self.zone = zone
        msh = self.result.msh
        self.seed = "|".join(msh.get(n) or "" for n in (3, 4, 10))
        self.source_endpoint = source_endpoint
        if ods is None:
            # The channel sends the Bundle to every practice ORC-21 names: one holding another
            # practice's patients or results must not be sent to both.
            practices = ordering_practices(er7)
            if len(practices) > 1:
                raise ValueError(
                    f"ORC-21 names more than one ordering practice ({', '.join(practices)}):"
                    " each practice's results must come in a message of their own"
                )
        self.ods = ods_code(ods) if ods else practice_ods(er7)
        self.practitioners: dict[str, dict[str, Any]] = {}
        self.orders: list[dict[str, Any]] = []
        lab_code = self.lab_code
        self.lab = organization(lab_code, self.id("organization", lab_code)) if lab_code else None
        self.practice = (
            organization(self.ods, self.id("organization", self.ods), self._practice_name())
            if self.ods
            else None
        )

    @property
    def lab_code(self) -> str | None:
        """The laboratory's ODS code (MSH-4), upper case."""
        code = self.result.msh.get(4)
        return ods_code(code) if code else None

    def id(self, *path: object) -> str:
        return str(uuid.uuid5(_NAMESPACE, "/".join([self.seed, *map(str, path)])))

    def build(self) -> dict[str, Any]:
        patients, reports = [], []
        for p, group in enumerate(self.result.patients, start=1):
            if group.pid is None:
                raise ValueError(f"result group {p} has no PID: a result needs its patient")
            subject = patient(group.pid, self.id("patient", p), self.zone, group.notes)
            patients.append(subject)
            for o, order in enumerate(group.orders, start=1):
                reports.append(self._order(order, subject, (p, o)))
        organisations = [o for o in (self.lab, self.practice) if o is not None]
        if self.lab and self.practice and self.lab["id"] == self.practice["id"]:
            organisations = [self.lab]
        resources = [
            self._header(reports),
            *patients,
            *organisations,
            *self.practitioners.values(),
            *self.orders,
        ]
        bundle_id = self.id("bundle")
        bundle: dict[str, Any] = {"resourceType": "Bundle", "id": bundle_id}
        unmapped = self._not_mapped()
        if unmapped:
            bundle["meta"] = {"tag": unmapped}
        bundle["identifier"] = {"system": UUID_SYSTEM, "value": bundle_id}
        bundle["type"] = "message"
        timestamp = fhir_instant(self.result.msh.get(7), self.zone)
        if timestamp:
            bundle["timestamp"] = timestamp
        bundle["entry"] = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
        return bundle

    def _not_mapped(self) -> list[dict[str, str]]:
        """A flag per kind of segment the Bundle does not carry, Z segments included."""
        return [
            not_mapped(
                name,
                f"{name} segment not mapped: {LEFT_OUT.get(name, 'local data')} the practice"
                " does not receive",
            )
            for name in self.result.left_out
        ]

    def _practice_name(self) -> str | None:
        for order in (o for g in self.result.patients for o in g.orders):
            facility = order.orc.field(21) if order.orc else None
            if facility and self.ods == _facility_ods(facility):
                return facility.get(1)
        return None

    def _header(self, reports: list[dict[str, Any]]) -> dict[str, Any]:
        msh = self.result.msh
        header: dict[str, Any] = {
            "resourceType": "MessageHeader",
            "id": self.id("header"),
            "eventCoding": EVENT,
        }
        if self.practice:
            header["destination"] = [
                {
                    "endpoint": f"{ODS_CODE}|{quote(self.ods or '')}",
                    "receiver": reference(self.practice),
                }
            ]
        if self.lab:
            header["sender"] = reference(self.lab)
        source: dict[str, Any] = {}
        if msh.get(3):
            source["name"] = msh.get(3)
        lab_code = self.lab_code
        source["endpoint"] = self.source_endpoint or (
            f"{ODS_CODE}|{quote(lab_code)}"
            if lab_code
            else f"urn:tie:hl7v2:{quote(msh.get(3) or 'unknown')}"
        )
        header["source"] = source
        if reports:
            header["focus"] = [reference(r) for r in reports]
        return header

    def _requester(self, order: OrderGroup) -> dict[str, str] | None:
        """The ordering provider (ORC-12, else OBR-16) as a Practitioner, once per identity."""
        xcn: Composite | None = order.orc.field(12) if order.orc else None
        if not xcn:
            xcn = order.obr.field(16)
        if not xcn:
            return None
        key = f"{(xcn.get(9) or '').upper()}|{xcn.get(1) or xcn.text}"
        if key not in self.practitioners:
            self.practitioners[key] = practitioner(xcn, self.id("practitioner", key))
        return reference(self.practitioners[key])

    def _order(
        self, order: OrderGroup, subject: dict[str, Any], place: tuple[int, int]
    ) -> dict[str, Any]:
        """Adds the order's ServiceRequest, Specimens and Observations; returns its report."""
        zone, subject_ref = self.zone, reference(subject)
        request = service_request(
            order.orc,
            order.obr,
            self.id(*place, "request"),
            subject_ref,
            self._requester(order),
            zone,
        )
        specimens = [
            specimen_from_spm(spm, self.id(*place, "specimen", n), subject_ref, zone)
            for n, spm in enumerate(order.specimens, start=1)
        ]
        if not specimens:
            from_obr = specimen_from_obr(
                order.obr, self.id(*place, "specimen", 1), subject_ref, zone
            )
            specimens = [from_obr] if from_obr else []
        for specimen in specimens:
            specimen["request"] = [reference(request)]
        lab_ref = reference(self.lab) if self.lab else None
        context = ResultContext(
            subject=subject_ref,
            based_on=reference(request),
            performer=lab_ref,
            specimen=reference(specimens[0]) if specimens else None,
            effective=fhir_datetime(order.obr.get(7), zone),
            issued=fhir_instant(order.obr.get(22), zone),
            zone=zone,
        )
        observations, documents = [], []
        for n, group in enumerate(order.observations, start=1):
            document = embedded_document(group.obx) if is_document(group.obx) else None
            if document:
                documents.append(document)
            else:
                resource_id = self.id(*place, "observation", n)
                observations.append(
                    observation_resource(group.obx, group.notes, resource_id, context)
                )
        report = diagnostic_report(
            order.orc,
            order.obr,
            [group.obx for group in order.observations],
            self.id(*place, "report"),
            zone,
            based_on=reference(request),
            subject=subject_ref,
            performer=lab_ref,
            specimens=[reference(s) for s in specimens],
            results=[reference(o) for o in observations],
            conclusion=note_text(order.notes),
            presented_form=documents,
        )
        self.orders.extend([request, *specimens, report, *observations])
        return report


def _validate(bundle: dict[str, Any]) -> None:
    """Raise ValueError naming every element fhir.resources (R4B models) rejects, and any
    string over FHIR's 1 MB limit (which it does not check)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    oversize = _oversize_strings(bundle, "Bundle")
    if oversize:
        raise ValueError(
            f"the mapped Bundle is not valid FHIR: over the {MAX_STRING:,}-character string"
            f" limit: {'; '.join(oversize[:20])}"
        )

    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:20]
        )
        raise ValueError(f"the mapped Bundle is not valid FHIR: {problems}") from exc


def _oversize_strings(value: Any, path: str) -> list[str]:
    """``path: N characters`` of each string over MAX_STRING (base64Binary ``data`` aside)."""
    if isinstance(value, str):
        return [f"{path}: {len(value):,} characters"] if len(value) > MAX_STRING else []
    if isinstance(value, dict):
        items = [(f"{path}.{k}", v) for k, v in value.items() if k != "data"]
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return []
    return [found for where, item in items for found in _oversize_strings(item, where)]
