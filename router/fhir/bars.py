"""Reading a BaRS message: where it goes, what ties it to its conversation, its ServiceRequests.

Pure functions over the parsed Bundle (the document the source checked), so that
routing, correlation and the registry read one parse of the message.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.directory import SYSTEM_OF, Key, parse_key
from router.fhir.outcome import reject

NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
TARGET_HEADER = "nhsd-target-identifier"
# Keys that join messages into one conversation; header ids are kept for search only.
LINKING = frozenset(
    {
        "bundle_id",
        "message_header",
        "response_to",
        "servicerequest",
        "appointment",
        "identifier",
        "urn",
    }
)
# The keys a response's MessageHeader.response.identifier may name its message by: BaRS
# uses the Bundle.id, FHIR R4 itself the MessageHeader.id.
ANSWERABLE = ("bundle_id", "message_header")
MAX_VALUE = 255


def event_of(header: Mapping[str, Any]) -> str:
    coding = header.get("eventCoding") or header.get("event") or {}
    return str(coding.get("code") or "")


def is_response(header: Mapping[str, Any]) -> bool:
    """A ``*-response`` event that answers an earlier message (MessageHeader.response)."""
    return event_of(header).endswith("-response")


def response_to(header: Mapping[str, Any]) -> str | None:
    response = header.get("response")
    value = response.get("identifier") if isinstance(response, dict) else None
    return value if isinstance(value, str) and value else None


def source_endpoint(header: Mapping[str, Any]) -> str | None:
    source = header.get("source")
    value = source.get("endpoint") if isinstance(source, dict) else None
    return value if isinstance(value, str) and value else None


def destination_endpoint(header: Mapping[str, Any]) -> str | None:
    destinations = header.get("destination")
    first = destinations[0] if isinstance(destinations, list) and destinations else None
    value = first.get("endpoint") if isinstance(first, dict) else None
    return value if isinstance(value, str) and value else None


def _destination_endpoints(header: Mapping[str, Any]) -> list[str]:
    """The distinct ``endpoint`` of every MessageHeader.destination."""
    destinations = header.get("destination")
    endpoints = [
        d.get("endpoint")
        for d in (destinations if isinstance(destinations, list) else ())
        if isinstance(d, dict)
    ]
    return list(dict.fromkeys(e for e in endpoints if isinstance(e, str) and e))


def header_target(headers: Mapping[str, str]) -> Key | None:
    """The key in ``NHSD-Target-Identifier`` (base64 of a JSON identifier), if sent."""
    encoded = headers.get(TARGET_HEADER)
    if not encoded:
        return None
    try:
        identifier = json.loads(base64.b64decode(encoded.strip(), validate=True))
        system, value = identifier["system"], identifier["value"]
        return parse_key(f"{system}|{value}")
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise reject(
            400,
            "invalid",
            f"NHSD-Target-Identifier is not a base64 JSON identifier of a known system: {exc}",
            "NHSD-Target-Identifier",
        ) from exc


def message_target(header: Mapping[str, Any]) -> Key:
    """The key in ``MessageHeader.destination[0].endpoint`` (``system|value``).

    BaRS routing forwards to one receiver and answers with its answer, so a header naming
    several destinations is refused: forwarded to the first alone, it would be lost to the
    others without anyone being told."""
    endpoint = destination_endpoint(header)
    where = "Bundle.entry[0].resource.destination[0].endpoint"
    if endpoint is None:
        text = "no target: send NHSD-Target-Identifier or set MessageHeader.destination.endpoint"
        raise reject(400, "required", f"{text} (system|value)", where)
    named = _destination_endpoints(header)
    if len(named) > 1:
        raise reject(
            400,
            "not-supported",
            f"{len(named)} destinations ({', '.join(e[:MAX_VALUE] for e in named[:3])}"
            f"{', ...' if len(named) > 3 else ''}): BaRS routing forwards a message to one "
            "receiver; send one message to each",
            "Bundle.entry[0].resource.destination",
        )
    try:
        return parse_key(endpoint)
    except ValueError as exc:
        raise reject(400, "invalid", f"the target {endpoint!r}: {exc}", where) from exc


def encode_target(key: Key) -> str:
    """``NHSD-Target-Identifier`` for ``key``."""
    identifier = {"system": SYSTEM_OF[key.kind], "value": key.identifier}
    return base64.b64encode(json.dumps(identifier).encode()).decode()


def resources(document: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(fullUrl, resource) of every entry."""
    found = []
    for entry in document.get("entry") or ():
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            found.append((str(entry.get("fullUrl") or ""), entry["resource"]))
    return found


def logical_id(full_url: str, resource: Mapping[str, Any]) -> str | None:
    """The resource's id, else the uuid of its ``urn:uuid:`` fullUrl (what later messages
    use as its id, as the BaRS examples do)."""
    if isinstance(resource.get("id"), str) and resource["id"]:
        return resource["id"]
    if full_url.startswith("urn:uuid:"):
        return full_url.removeprefix("urn:uuid:")
    return None


def _identifiers(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(system, value)`` of each identifier; an ``identifier`` that is not a list has none
    here (the models refuse it, and the shape is read before they are done)."""
    identifiers = resource.get("identifier")
    found = []
    for identifier in identifiers if isinstance(identifiers, list) else ():
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            found.append((str(identifier.get("system") or ""), identifier["value"]))
    return found


def _urn(system: str, value: str) -> str | None:
    """An external URN an identifier carries: ``urn:...`` as the value, or system + value."""
    if value.startswith("urn:"):
        return value
    if system.startswith("urn:"):
        return f"{system}:{value}"
    return None


def conversation_keys(
    document: Mapping[str, Any], header: Mapping[str, Any], headers: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Correlation keys of a BaRS message (docs/fhir.md#conversations)."""
    keys: list[tuple[str, str]] = []
    if isinstance(document.get("id"), str):
        keys.append(("bundle_id", document["id"]))
    if isinstance(header.get("id"), str) and header["id"]:
        keys.append(("message_header", header["id"]))
    if (answered := response_to(header)) is not None:
        keys.append(("response_to", answered))
    for full_url, resource in resources(document):
        kind = resource.get("resourceType")
        for system, value in _identifiers(resource):
            if (urn := _urn(system, value)) is not None:
                keys.append(("urn", urn))
        if kind not in ("ServiceRequest", "Appointment"):
            continue
        name = "servicerequest" if kind == "ServiceRequest" else "appointment"
        rid = logical_id(full_url, resource)
        if rid is not None:
            keys.append((name, f"{kind}/{rid}"))
            if (kind, resource.get("status")) in (
                ("ServiceRequest", "revoked"),
                ("Appointment", "cancelled"),
            ):
                keys.append(("cancels", f"{kind}/{rid}"))
        keys.extend(("identifier", f"{s}|{v}") for s, v in _identifiers(resource))
    for name in ("x-request-id", "x-correlation-id"):
        if headers.get(name):
            keys.append((name.replace("-", "_"), headers[name]))
    return list(dict.fromkeys((k, v[:MAX_VALUE]) for k, v in keys))


@dataclass(frozen=True)
class IndexedRequest:
    """A ServiceRequest as the registry keeps it."""

    resource_id: str
    status: str
    patient: str
    identifiers: tuple[tuple[str, str], ...]
    resource: dict[str, Any] = field(hash=False)


def service_requests(document: Mapping[str, Any]) -> list[IndexedRequest]:
    """Every ServiceRequest in the message that has an id (or a ``urn:uuid`` fullUrl)."""
    by_url = {url: r for url, r in resources(document) if url}
    found = []
    for full_url, resource in resources(document):
        if resource.get("resourceType") != "ServiceRequest":
            continue
        rid = logical_id(full_url, resource)
        if rid is None:
            continue
        found.append(
            IndexedRequest(
                rid[:64],
                str(resource.get("status") or "")[:32],
                _nhs_number(resource.get("subject"), by_url)[:64],
                tuple((s[:255], v[:255]) for s, v in _identifiers(resource)),
                {**resource, "id": rid},
            )
        )
    return found


def _nhs_number(subject: Any, by_url: Mapping[str, dict[str, Any]]) -> str:
    """The patient's NHS number: a logical reference, or the Patient the reference names."""
    if not isinstance(subject, dict):
        return ""
    identifier = subject.get("identifier")
    if isinstance(identifier, dict) and identifier.get("system") == NHS_NUMBER:
        return str(identifier.get("value") or "")
    patient = by_url.get(str(subject.get("reference") or ""))
    if patient is None:
        return ""
    for system, value in _identifiers(patient):
        if system == NHS_NUMBER:
            return value
    return ""


def target_for(header: Mapping[str, Any], headers: Mapping[str, str]) -> Key:
    """Where a request goes: NHSD-Target-Identifier, else the MessageHeader's destination."""
    return header_target(headers) or message_target(header)
