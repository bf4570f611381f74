"""Directory keys and addresses: who an entry is for (``ods:RYE``, ``dos:…``, ``asid:…``) and
where it is reached (a FHIR base URL, an MLLP ``host:port`` or a MESH mailbox).

Pure values and checks, with no store: the FHIR code, the CLI and the API parse what
they are given here, so every way in accepts and refuses the same things.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

KINDS = ("ods", "dos", "asid")
TRANSPORTS = ("fhir", "mllp", "mesh")
Kind = Literal["ods", "dos", "asid"]
Transport = Literal["fhir", "mllp", "mesh"]

# FHIR identifier systems of each kind, compared without scheme and case (both occur).
_SYSTEMS = {
    "fhir.nhs.uk/id/ods-organization-code": "ods",
    "fhir.nhs.uk/id/ods-site-code": "ods",
    "fhir.nhs.uk/id/dos-service-id": "dos",
    "fhir.nhs.uk/id/nhsspineasid": "asid",
}
SYSTEM_OF = {
    "ods": "https://fhir.nhs.uk/Id/ods-organization-code",
    "dos": "https://fhir.nhs.uk/Id/dos-service-id",
    "asid": "https://fhir.nhs.uk/Id/nhsSpineASID",
}
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$")
_MAILBOX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def system_kind(system: str | None) -> str | None:
    """The directory kind of a FHIR identifier system, or None for any other system."""
    if not system:
        return None
    bare = re.sub(r"^https?://", "", system.strip().lower()).rstrip("/")
    return _SYSTEMS.get(bare)


@dataclass(frozen=True, slots=True)
class Key:
    """One organisation, service or system, written ``ods:RYE``, ``dos:111111111``..."""

    kind: str
    identifier: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.identifier}"


def make_key(kind: str, identifier: str) -> Key:
    kind = kind.strip().lower()
    identifier = identifier.strip()
    if kind not in KINDS:
        raise ValueError(f"unknown identifier kind {kind!r}: use one of {', '.join(KINDS)}")
    if not _IDENTIFIER.match(identifier):
        raise ValueError(f"{identifier!r} is not a valid {kind} identifier")
    return Key(kind, identifier.upper() if kind == "ods" else identifier)


def parse_key(text: str, default_kind: str | None = None) -> Key:
    """``ods:RYE``, a FHIR ``system|value`` of a known system, or a bare ``default_kind`` value."""
    text = text.strip()
    if "|" in text:
        system, _, value = text.rpartition("|")
        kind = system_kind(system)
        if kind is None:
            raise ValueError(f"{system!r} is not an ODS, DoS or ASID identifier system")
        return make_key(kind, value)
    kind, sep, value = text.partition(":")
    if sep and kind.lower() in KINDS:
        return make_key(kind, value)
    if default_kind is None:
        raise ValueError(f"{text!r} names no kind: write ods:<code>, dos:<id> or asid:<asid>")
    return make_key(default_kind, text)


def check_address(transport: str, address: str) -> str:
    """The address if it suits the transport; ValueError naming what is expected otherwise."""
    address = address.strip()
    if transport == "fhir":
        if not re.match(r"^https?://[^/\s]+", address):
            raise ValueError(f"a FHIR endpoint is an http(s) base URL, not {address!r}")
        return address.rstrip("/")
    if transport == "mllp":
        match = _HOST_PORT.match(address)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"an MLLP endpoint is host:port, not {address!r}")
        return address
    if transport == "mesh":
        if not _MAILBOX.match(address):
            raise ValueError(f"a MESH endpoint is a mailbox id, not {address!r}")
        return address.upper()
    raise ValueError(f"unknown transport {transport!r}: use one of {', '.join(TRANSPORTS)}")


def split_host_port(address: str) -> tuple[str, int]:
    match = _HOST_PORT.match(address)
    if match is None:
        raise ValueError(f"{address!r} is not host:port")
    return match["host"].strip("[]"), int(match["port"])
