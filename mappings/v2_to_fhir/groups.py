"""The result groups of an ORU^R01, found by hl7apy's structure-aware parser.

Group names differ by version (``ORU_R01_RESPONSE`` in 2.3, ``ORU_R01_PATIENT_RESULT``
from 2.4), so groups are matched by the end of their names. Values are read from the
segments as received, not from hl7apy's tree: hl7apy writes a field the version does
not define (an ORC-21 in 2.3) back in the wrong place. Z segments (local to the sender)
have no place in the structure: they are set aside, by name, for the mapping to report,
as is every other segment the mapping does not carry (``left_out``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from router.hl7v2.er7 import Er7Message
from router.hl7v2.structure import parse_structured

from .segments import Delimiters, Segment

# A Z segment: a sender's own segment (HL7 leaves names starting with Z to local use).
_LOCAL = re.compile(r"Z[A-Z0-9]{2}")
# The segments the Bundle carries (NTE after PID aside: the Patient flags it). Any other
# the structure holds (SFT, PD1, NK1, PV1, PV2, TQ1, TQ2, CTD, FT1, CTI, DSC) is left out,
# and named so that the mapping flags it.
CARRIED = frozenset({"MSH", "PID", "NTE", "ORC", "OBR", "OBX", "SPM"})


@dataclass
class ObservationGroup:
    obx: Segment
    notes: list[Segment] = field(default_factory=list)


@dataclass
class OrderGroup:
    obr: Segment
    orc: Segment | None = None
    notes: list[Segment] = field(default_factory=list)  # NTE after OBR: comments on the report
    observations: list[ObservationGroup] = field(default_factory=list)
    specimens: list[Segment] = field(default_factory=list)


@dataclass
class PatientGroup:
    pid: Segment | None = None
    notes: list[Segment] = field(default_factory=list)  # NTE after PID: notes on the patient
    orders: list[OrderGroup] = field(default_factory=list)


@dataclass
class ResultMessage:
    msh: Segment
    patients: list[PatientGroup]
    z_segments: list[str] = field(default_factory=list)  # their names, each once, in order
    # Every segment not CARRIED, Z segments included: names, each once, in order.
    left_out: list[str] = field(default_factory=list)


def read_result(raw: str | bytes) -> ResultMessage:
    """Parse ``raw`` (an ORU^R01 of v2.3 to 2.5.1) into its patient and order groups."""
    message = Er7Message(raw)
    delimiters = Delimiters(message.field_sep, message.encoding, message.codec)
    msh = Segment(message.segments[0], delimiters)
    kind = (msh.get(9, 1) or "", msh.get(9, 2) or "")
    if (kind[0].upper(), kind[1].upper()) != ("ORU", "R01"):
        # Another structure (ORU^R30, R32, W01...) has no groups read here: its Bundle would
        # reach the practice with no patient and no result.
        raise ValueError(f"MSH-9 is {'^'.join(filter(None, kind))}: the mapping reads ORU^R01 only")
    names = message.segment_names()
    standard = [
        (n, text)
        for n, text in zip(names, message.segments, strict=True)
        if not _LOCAL.fullmatch(n)
    ]
    tree = parse_structured(_skeleton(message, [n for n, _ in standard]))
    nodes = _segments(tree)
    if [node.name for node in nodes] != [n for n, _ in standard]:
        raise ValueError(f"segments out of order for {tree.name}: {' '.join(names)}")
    received = {
        id(node): Segment(text, delimiters) for node, (_, text) in zip(nodes, standard, strict=True)
    }
    patients: list[PatientGroup] = []
    for group in _groups(tree, "_PATIENT_RESULT", "_RESPONSE"):
        patient = PatientGroup()
        patients.append(patient)
        for child in group.children:
            if child.name.endswith("_PATIENT"):
                # The tolerant parser can put a second patient (PID after the first one's
                # OBX) in the same group: that PID starts the next patient's results.
                if patient.pid is not None or patient.orders:
                    patient = PatientGroup()
                    patients.append(patient)
                segments = [received[id(s)] for s in _segments(child)]
                pid = [s for s in segments if s.name == "PID"]
                patient.pid = pid[0] if pid else None
                patient.notes = [s for s in segments if s.name == "NTE"]
            elif child.name.endswith("_ORDER_OBSERVATION"):
                patient.orders.append(_order(child, received))
    if not any(patient.orders for patient in patients):
        raise ValueError("no result in the message: an ORU^R01 needs an OBR")
    return ResultMessage(
        msh,
        patients,
        list(dict.fromkeys(n for n in names if _LOCAL.fullmatch(n))),
        list(dict.fromkeys(n for n in names if n not in CARRIED)),
    )


def _skeleton(message: Er7Message, names: list[str]) -> bytes:
    """``names`` (MSH first), after an MSH with only what hl7apy reads (MSH-9, MSH-12).

    Groups depend on segment names only; hl7apy parsing every field of every segment would
    cost ten times as much, for values that are read from the text anyway.
    """
    sep = message.field_sep
    raw_msh = message.segments[0].split(sep)
    msh9, msh12 = (raw_msh[i] if i < len(raw_msh) else "" for i in (8, 11))
    msh = sep.join(["MSH", message.encoding, "", "", "", "", "", "", msh9, "", "", msh12])
    return "\r".join([msh, *names[1:]]).encode("ascii", errors="replace")


def _order(group: Any, received: dict[int, Segment]) -> OrderGroup:
    orc: Segment | None = None
    order: OrderGroup | None = None
    notes: list[Segment] = []
    observations: list[ObservationGroup] = []
    specimens: list[Segment] = []
    for child in group.children:
        if child.classname == "Segment":
            segment = received[id(child)]
            if segment.name == "ORC":
                orc = segment
            elif segment.name == "OBR":
                order = OrderGroup(segment)
            elif segment.name == "NTE":
                notes.append(segment)
        elif child.name.endswith("_OBSERVATION"):
            observations.append(_observation(child, received))
        elif child.name.endswith("_SPECIMEN"):  # SPM and the OBX about that specimen
            for segment in (received[id(s)] for s in _segments(child)):
                if segment.name == "SPM":
                    specimens.append(segment)
                elif segment.name == "OBX":
                    observations.append(ObservationGroup(segment))
    if order is None:
        raise ValueError("an ORDER_OBSERVATION group without OBR")
    order.orc, order.notes, order.observations, order.specimens = (
        orc,
        notes,
        observations,
        specimens,
    )
    return order


def _observation(group: Any, received: dict[int, Segment]) -> ObservationGroup:
    segments = [received[id(s)] for s in _segments(group)]
    obx = next(s for s in segments if s.name == "OBX")
    return ObservationGroup(obx, [s for s in segments if s.name == "NTE"])


def _groups(element: Any, *suffixes: str) -> list[Any]:
    return [c for c in element.children if c.classname == "Group" and c.name.endswith(suffixes)]


def _segments(element: Any) -> list[Any]:
    """Every segment under ``element``, depth first, in message order."""
    found: list[Any] = []
    for child in element.children:
        if child.classname == "Segment":
            found.append(child)
        else:
            found.extend(_segments(child))
    return found
