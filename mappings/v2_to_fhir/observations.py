"""One OBX (with its NTE comments) as an Observation; an ED value as an Attachment."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from .datatypes import code, codeable_concept, decimal, fhir_datetime
from .flags import KNOWN, flag
from .segments import Composite, Segment
from .strings import MAX_STRING
from .units import quantity_unit

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
TEXT_TYPES = frozenset({"ST", "TX", "FT", "TM"})
CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})

# OBX-11 (HL7 table 0085) -> Observation.status
_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "I": "registered",
    "O": "registered",
    "X": "cancelled",
    "N": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
}

# OBX-8 (HL7 table 0078) codes that are v3 ObservationInterpretation codes, with displays.
_INTERPRETATIONS = {
    "L": "Low",
    "H": "High",
    "LL": "Critical low",
    "HH": "Critical high",
    "<": "Off scale low",
    ">": "Off scale high",
    "N": "Normal",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "U": "Significant change up",
    "D": "Significant change down",
    "B": "Better",
    "W": "Worse",
    "S": "Susceptible",
    "R": "Resistant",
    "I": "Intermediate",
    "MS": "moderately susceptible",
    "VS": "very susceptible",
    "POS": "Positive",
    "NEG": "Negative",
    "IND": "Indeterminate",
    "DET": "Detected",
    "ND": "Not detected",
    "E": "Equivocal",
    "NS": "Non-susceptible",
    "SDD": "Susceptible-dose dependent",
}

# The flag of a value kept as text: its type is mapped, but this value does not parse.
_FALLBACK_FLAG = {
    **dict.fromkeys(("NM", "SN", "DT", "DTM", "TS", *CODED_TYPES), "unparsed-value"),
    "ED": "invalid-embedded-document",
}
_RANGE = re.compile(r"^\s*([+-]?\d+\.?\d*)\s*(?:-|to)\s*([+-]?\d+\.?\d*)\s*$")
_BOUND = re.compile(r"^\s*([<>])=?\s*([+-]?\d+\.?\d*)\s*$")
_MEDIA_TYPES = {
    "PDF": "application/pdf",
    "RTF": "application/rtf",
    "HTML": "text/html",
    "XML": "application/xml",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "PNG": "image/png",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "TEXT": "text/plain",
}


@dataclass(frozen=True)
class ResultContext:
    """What every Observation of one order shares: references and the order's times."""

    subject: dict[str, str]
    based_on: dict[str, str]
    performer: dict[str, str] | None
    specimen: dict[str, str] | None
    effective: str | None
    issued: str | None
    zone: ZoneInfo


def is_document(obx: Segment) -> bool:
    return (obx.get(2) or "").upper() == "ED"


def observation(
    obx: Segment, notes: list[Segment], resource_id: str, context: ResultContext
) -> dict[str, Any]:
    """The Observation of ``obx``; a value it cannot map is kept as text and flagged."""
    resource: dict[str, Any] = {"resourceType": "Observation", "id": resource_id}
    value, tags = _value(obx, context.zone)
    if tags:
        resource["meta"] = {"tag": tags}
    resource["basedOn"] = [context.based_on]
    resource["status"] = _STATUS.get((obx.get(11) or "").upper(), "unknown")
    resource["code"] = codeable_concept(obx.field(3)) or {"text": "OBX-3 is empty"}
    resource["subject"] = context.subject
    effective = fhir_datetime(obx.get(14), context.zone) or context.effective
    if effective:
        resource["effectiveDateTime"] = effective
    if context.issued:
        resource["issued"] = context.issued
    if context.performer:
        resource["performer"] = [context.performer]
    resource.update(value)
    interpretation = _interpretation(obx)
    if interpretation:
        resource["interpretation"] = interpretation
    note = note_text(notes)
    if note:
        resource["note"] = [{"text": note}]
    if context.specimen:
        resource["specimen"] = context.specimen
    reference_range = _reference_range(obx)
    if reference_range:  # with a repeated OBX-5 it applies to each component's value
        for holder in resource.get("component") or [resource]:
            holder["referenceRange"] = [reference_range]
    return resource


def note_text(notes: list[Segment]) -> str | None:
    """NTE-3 comments as one text, a line per NTE (blank lines kept between paragraphs)."""
    lines = ["\n".join(r.text for r in nte.repetitions(3)).rstrip() for nte in notes]
    return "\n".join(lines).strip() or None


def embedded_document(obx: Segment) -> dict[str, Any] | None:
    """An ED OBX-5 (source^type^subtype^encoding^data) as an Attachment; None if unreadable."""
    value = obx.field(5)
    encoding = (value.get(4) or "").upper()
    # Escapes decoded first: a lab that wraps base64 or hex lines writes the line breaks
    # as \X0D\\X0A\ or \.br\ (a bare CR would end the segment).
    text = value.delimiters.text((value.component(5).raw or "").strip())
    try:
        if encoding == "BASE64":
            data = base64.b64decode("".join(text.split()), validate=True)
        elif encoding == "HEX":
            data = bytes.fromhex("".join(text.split()))
        elif encoding == "A":
            data = text.encode("utf-8")
        else:
            return None
    except (binascii.Error, ValueError):
        return None
    if not data:
        return None
    subtype = value.get(3) or ""
    attachment: dict[str, Any] = {
        "contentType": code(subtype)
        if "/" in subtype
        else _MEDIA_TYPES.get(subtype.upper(), "application/octet-stream"),
        "data": base64.b64encode(data).decode("ascii"),
        "size": len(data),
        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
    }
    title = codeable_concept(obx.field(3))
    if title and title.get("text"):
        attachment["title"] = title["text"]
    return attachment


def _value(obx: Segment, zone: ZoneInfo) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """``value[x]`` (a ``component`` per repetition when OBX-5 repeats), with flags."""
    kind = (obx.get(2) or "").upper()
    reps = obx.repetitions(5)
    if not reps:
        return {}, []
    if kind in TEXT_TYPES:
        text = "\n".join(r.text for r in reps).strip("\n")
        return ({"valueString": text} if text.strip() else {}), []
    tags: list[dict[str, str]] = []
    values = []
    for rep in reps:
        element, value = _one(rep, kind, obx, zone)
        if element is None:
            if kind == "ED" and len(rep.text) > MAX_STRING:
                raise ValueError(
                    f"OBX {obx.get(1) or ''} (ED, {rep.get(4) or 'no encoding'}): the embedded"
                    f" document does not decode, and its {len(rep.text):,} characters are over"
                    f" FHIR's {MAX_STRING:,}-character string limit, so it cannot go as text:"
                    " the laboratory must send it again"
                )
            reason = _FALLBACK_FLAG.get(kind, "unmapped-value-type")
            tags = [flag(reason, f"OBX-2 {kind or '(empty)'}: {KNOWN[reason]}")]
            element, value = "valueString", rep.text
        if value is not None and (element != "valueString" or value.strip()):
            values.append((element, value))
    if not values:
        return {}, tags
    if len(values) == 1:
        return dict(values), tags
    # A repeated OBX-5 (two organisms, two antibodies): as the HL7 v2-to-FHIR IG maps it, a
    # component per repetition with the OBX-3 code, and no value[x] (FHIR obs-7 forbids a
    # value beside a component of the Observation's own code).
    concept = codeable_concept(obx.field(3)) or {"text": "OBX-3 is empty"}
    return {"component": [{"code": concept, element: value} for element, value in values]}, tags


def _one(rep: Composite, kind: str, obx: Segment, zone: ZoneInfo) -> tuple[str | None, Any]:
    if kind == "NM":
        comparator, number = decimal(rep.text)
        if number is None:
            return None, None
        return "valueQuantity", _quantity(number, comparator, obx)
    if kind == "SN":
        return _structured_numeric(rep, obx)
    if kind in CODED_TYPES:
        return "valueCodeableConcept", codeable_concept(rep)
    if kind in ("DT", "DTM", "TS"):
        when = fhir_datetime(rep.get(1), zone)
        return ("valueDateTime", when) if when else (None, None)
    return None, None


def _quantity(number: int | float, comparator: str | None, obx: Segment) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": number}
    if comparator:
        quantity["comparator"] = comparator
    quantity.update(quantity_unit(obx.field(6)))
    return quantity


def _structured_numeric(rep: Composite, obx: Segment) -> tuple[str | None, Any]:
    """SN: comparator^num1^separator^num2 as a Quantity, Ratio or Range."""
    comparator = rep.get(1) or ""
    _, first = decimal(rep.get(2))
    separator = rep.get(3)
    _, second = decimal(rep.get(4))
    if first is None:
        return None, None
    if separator is None and second is None:
        if comparator in ("", "="):
            return "valueQuantity", _quantity(first, None, obx)
        if comparator in ("<", ">", "<=", ">="):
            return "valueQuantity", _quantity(first, comparator, obx)
        return None, None
    if comparator or second is None:
        return None, None
    if separator in (":", "/"):
        return "valueRatio", {"numerator": {"value": first}, "denominator": {"value": second}}
    if separator == "-":
        return "valueRange", {
            "low": _quantity(first, None, obx),
            "high": _quantity(second, None, obx),
        }
    return None, None


def _interpretation(obx: Segment) -> list[dict[str, Any]]:
    out = []
    for rep in obx.repetitions(8):
        code = rep.get(1)
        if not code:
            continue
        display = _INTERPRETATIONS.get(code.upper())
        if display:
            out.append(
                {"coding": [{"system": INTERPRETATION, "code": code.upper(), "display": display}]}
            )
        else:
            out.append({"text": code})
    return out


def _reference_range(obx: Segment) -> dict[str, Any] | None:
    """OBX-7 "low-high", "<x" or ">x" as low/high; always with the lab's own text."""
    text = obx.field(7).text.strip()
    if not text:
        return None
    unit = quantity_unit(obx.field(6))
    out: dict[str, Any] = {}
    both = _RANGE.match(text)
    bound = _BOUND.match(text)
    if both:
        out["low"] = {"value": decimal(both.group(1))[1], **unit}
        out["high"] = {"value": decimal(both.group(2))[1], **unit}
    elif bound:
        side = "high" if bound.group(1) == "<" else "low"
        out[side] = {"value": decimal(bound.group(2))[1], **unit}
    out["text"] = text
    return out
