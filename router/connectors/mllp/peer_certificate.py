"""Who a TLS sender proved to be: its verified client certificate, as stored with each of
its messages, so that an auditor can tell which sending system delivered one."""

from __future__ import annotations

import hashlib
import ssl
from typing import Any

from router.store.inbound import TLS_CLIENT_KEY

_KEY_VALUE_SIZE = 255  # correlations.value

_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "domainComponent": "DC",
    "userId": "UID",
}


def tls_source(ssl_object: ssl.SSLObject | None) -> dict[str, str]:
    """The source metadata of a TLS connection, made once per connection: the protocol
    version and, when the sender presented a certificate that verified, its subject,
    issuer, serial number and SHA-256 fingerprint (as ``openssl x509 -fingerprint -sha256``
    prints it). Flat string values: the store serialises such metadata once a connection."""
    if ssl_object is None:
        return {}
    found = {"tls": ssl_object.version() or "TLS"}
    cert = ssl_object.getpeercert()  # empty unless the certificate was verified
    der = ssl_object.getpeercert(binary_form=True)
    if not cert or der is None:
        return found
    digest = hashlib.sha256(der).hexdigest().upper()
    found.update(
        client_subject=distinguished_name(cert.get("subject", ())),
        client_issuer=distinguished_name(cert.get("issuer", ())),
        client_serial=str(cert.get("serialNumber", "")),
        client_sha256=":".join(digest[i : i + 2] for i in range(0, len(digest), 2)),
    )
    return found


def client_keys(source: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """The correlation key a verified sender's messages carry, its subject (cut to fit), to
    find them by (``run.py messages --key SUBJECT``)."""
    subject = source.get("client_subject")
    return ((TLS_CLIENT_KEY, subject[:_KEY_VALUE_SIZE]),) if subject else ()


def distinguished_name(rdns: Any) -> str:
    """``getpeercert()``'s subject or issuer as RFC 4514 writes it: most specific first,
    e.g. ``CN=lab.example.org,O=Example Trust,C=GB``."""
    parts = []
    for rdn in reversed(rdns):
        parts.append("+".join(f"{_SHORT.get(name, name)}={_escaped(value)}" for name, value in rdn))
    return ",".join(parts)


def _escaped(value: str) -> str:
    out = "".join(f"\\{c}" if c in ',+"\\<>;' else c for c in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out
