"""Paths into FHIR JSON for conditions, ``correlate``, ``order_by`` and directory targets.

A small, documented subset of FHIRPath (docs/fhir.md#fhir-paths)::

    MessageHeader.eventCoding.code
    Bundle.entry.resource.ofType(Patient).identifier.where(system='https://fhir.nhs.uk/Id/nhs-number').value
    MessageHeader.destination[0].endpoint

The first step names a resource type: the message itself when it is of that type, else
(for a Bundle) every entry's resource of that type. Then element names, each optionally
indexed (``[0]``, from 0), ``ofType(Type)`` (resources of a type), ``where(name='text')``
(elements whose child equals the text) and ``first()``. Lists are walked element by
element, so a path yields every value it reaches: text, numbers and booleans as text
(``true``/``false``), anything else as compact JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

_ROOT = re.compile(r"[A-Z][A-Za-z0-9]*")
_STEP = re.compile(
    r"ofType\((?P<type>[A-Z][A-Za-z0-9]*)\)"
    r"|where\((?P<field>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*'(?P<text>(?:[^'\\]|\\.)*)'\)"
    r"|(?P<first>first\(\))"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*+)(?:\[(?P<index>\d+)\])?(?!\()"
)
# A FHIR path's root has a lower-case letter; an HL7 v2 segment id (PID, MSH) has none.
_LOOKS_FHIR = re.compile(r"^[A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*(\.|$)")


@dataclass(frozen=True, slots=True)
class Step:
    kind: str  # "name", "type", "where", "first"
    name: str = ""
    index: int | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class FhirPath:
    root: str
    steps: tuple[Step, ...]


def looks_like_fhir(path: str) -> bool:
    return bool(_LOOKS_FHIR.match(path.strip()))


@lru_cache(maxsize=1024)
def parse(path: str) -> FhirPath:
    """Parse once (cached); ValueError says where the path stops making sense."""
    text = path.strip()
    root = _ROOT.match(text)
    if root is None:
        raise ValueError(f"bad FHIR path {path!r}: it starts with a resource type, e.g. Patient")
    steps: list[Step] = []
    at = root.end()
    while at < len(text):
        if text[at] != ".":
            raise ValueError(f"bad FHIR path {path!r}: expected '.' at position {at}")
        match = _STEP.match(text, at + 1)
        if match is None:
            raise ValueError(
                f"bad FHIR path {path!r} at position {at + 1}: expected a name, name[n], "
                "ofType(Type), where(name='text') or first()"
            )
        if match["name"]:
            index = int(match["index"]) if match["index"] is not None else None
            steps.append(Step("name", match["name"], index))
        elif match["type"]:
            steps.append(Step("type", match["type"]))
        elif match["field"]:
            steps.append(Step("where", match["field"], text=re.sub(r"\\(.)", r"\1", match["text"])))
        else:
            steps.append(Step("first"))
        at = match.end()
    return FhirPath(root.group(), tuple(steps))


def values(document: Any, path: str) -> list[str]:
    """Every value ``path`` reaches in ``document`` (parsed FHIR JSON), as text."""
    compiled = parse(path)
    nodes = _start(document, compiled.root)
    for step in compiled.steps:
        nodes = _apply(nodes, step)
        if not nodes:
            return []
    return [_text(node) for node in nodes if node is not None]


def _start(document: Any, root: str) -> list[Any]:
    if not isinstance(document, dict):
        return []
    if document.get("resourceType") == root:
        return [document]
    if document.get("resourceType") == "Bundle":
        return [
            entry["resource"]
            for entry in document.get("entry") or ()
            if isinstance(entry, dict)
            and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == root
        ]
    return []


def _apply(nodes: list[Any], step: Step) -> list[Any]:
    if step.kind == "name":
        out: list[Any] = []
        for node in nodes:
            if not isinstance(node, dict) or step.name not in node:
                continue
            value = node[step.name]
            items = value if isinstance(value, list) else [value]
            if step.index is not None:
                items = items[step.index : step.index + 1]
            out.extend(items)
        return out
    if step.kind == "type":
        return [n for n in nodes if isinstance(n, dict) and n.get("resourceType") == step.name]
    if step.kind == "where":
        return [n for n in nodes if isinstance(n, dict) and _text(n.get(step.name)) == step.text]
    return nodes[:1]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
