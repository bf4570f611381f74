"""When the certificates the engine presents expire: each MLLP source's and destination's
``tls.cert``, each HTTPS client certificate (HTTP destinations, BaRS forwarding, the
booking proxy) and each MESH mailbox's ``cert``.

A certificate that expires stops every exchange over it at once, hours after anyone could
have renewed it calmly: ``/metrics`` reports each file's expiry
(``tie_tls_certificate_expiry_timestamp_seconds``), ``run.py check`` warns within
``EXPIRING_WITHIN`` and fails on an expired one, and ``serve`` says the same in its log
at start. A file holds the certificate and its intermediates: its expiry is the earliest
of them (an intermediate that expires breaks the chain as well).

The dates are read from the PEM files with the standard library (the ``ssl`` module gives
no public way to read a certificate's dates without a connection): the DER of each
certificate, down to ``tbsCertificate.validity.notAfter``. A file is read again when its
size, time or inode changes (a renewal in place, which MLLP sources take without a reload).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from router.config import ChannelConfig
    from router.config.mesh import MeshOptions

EXPIRING_WITHIN = timedelta(days=14)
_NAMES = {  # 2.5.4.x attribute types, as DER encodes their OIDs
    b"\x55\x04\x03": "CN",
    b"\x55\x04\x06": "C",
    b"\x55\x04\x07": "L",
    b"\x55\x04\x08": "ST",
    b"\x55\x04\x0a": "O",
    b"\x55\x04\x0b": "OU",
}
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)
_CRL = re.compile(rb"-----BEGIN X509 CRL-----(.+?)-----END X509 CRL-----", re.DOTALL)


class Presented(NamedTuple):
    """A certificate file the engine presents, and the setting that names it."""

    channel: str  # "" for a MESH mailbox (engine.yaml)
    destination: str  # "" for a source or a mailbox
    mailbox: str  # the MESH mailbox's name under mesh.mailboxes, else ""
    role: str  # mllp_server, mllp_client, https_client, mesh_client
    setting: str  # e.g. "source.mllp.tls.cert"
    file: Path
    # A running MLLP source's: when the certificate it serves expires, which is not the
    # file's when a renewed file did not load (the last good pair stays in use).
    served: Callable[[], datetime | None] | None = None


class CertificateUnreadable(ValueError):
    """A file with no certificate whose dates could be read."""


def presented_certificates(channels: Iterable[ChannelConfig], mesh: MeshOptions) -> list[Presented]:
    """Every certificate file of ``channels`` and of the MESH mailboxes."""
    found = []
    for channel in channels:
        source = channel.source
        if source.mllp is not None and source.mllp.tls is not None:
            setting, cert = "source.mllp.tls.cert", source.mllp.tls.cert
            found.append(Presented(channel.name, "", "", "mllp_server", setting, cert))
        forwarding = {
            "http.bars": source.http.bars if source.http is not None else None,
            "proxy": source.proxy,
        }
        for key, options in forwarding.items():
            if options is not None and options.tls.cert is not None:
                setting, cert = f"source.{key}.tls.cert", options.tls.cert
                found.append(Presented(channel.name, "", "", "https_client", setting, cert))
        for name, destination in channel.destinations.items():
            if destination.mllp is not None and destination.mllp.tls is not None:
                cert = destination.mllp.tls.cert
                setting = f"destinations.{name}.mllp.tls.cert"
                if cert is not None:
                    found.append(Presented(channel.name, name, "", "mllp_client", setting, cert))
            if destination.http is not None and destination.http.tls.cert is not None:
                cert = destination.http.tls.cert
                setting = f"destinations.{name}.http.tls.cert"
                found.append(Presented(channel.name, name, "", "https_client", setting, cert))
    for name, box in mesh.mailboxes.items():
        if box.cert is not None:
            setting = f"mesh.mailboxes.{name}.cert"
            found.append(Presented("", "", name, "mesh_client", setting, box.cert))
    return found


class CertificateFacts(NamedTuple):
    """One certificate of a file: who it names, its SHA-256 fingerprint, its expiry."""

    subject: str
    sha256: str  # hex, as openssl x509 -fingerprint -sha256 prints it without colons
    not_after: datetime


def certificates_in(pem: bytes) -> list[CertificateFacts]:
    """Each certificate in ``pem``, in the file's order (a CA bundle's roots)."""
    found = []
    for block in _PEM.findall(pem):
        try:
            der = base64.b64decode(block)
            subject, expiry = _der_facts(der)
        except (binascii.Error, IndexError, ValueError) as exc:
            raise CertificateUnreadable(f"a certificate could not be read ({exc})") from exc
        found.append(CertificateFacts(subject, hashlib.sha256(der).hexdigest().upper(), expiry))
    if not found:
        raise CertificateUnreadable("no PEM certificate in it")
    return found


def crl_next_update(pem: bytes) -> datetime | None:
    """The earliest ``nextUpdate`` of the CRLs in ``pem`` (None: none gives one):

    CertificateList ::= SEQUENCE { tbsCertList SEQUENCE { version INTEGER OPTIONAL,
    signature, issuer, thisUpdate Time, nextUpdate Time OPTIONAL, ... }, ... }"""
    dates = []
    for block in _CRL.findall(pem):
        try:
            der = base64.b64decode(block)
            _, crl, _ = _element(der, 0)
            _, position, tbs_end = _element(der, crl)
            if _element(der, position)[0] == 0x02:  # the version
                position = _element(der, position)[2]
            for _ in range(3):  # signature, issuer, thisUpdate
                position = _element(der, position)[2]
            if position < tbs_end:
                tag, start, end = _element(der, position)
                if tag in (0x17, 0x18):
                    dates.append(_der_time(tag, der[start:end]))
        except (binascii.Error, IndexError, ValueError) as exc:
            raise CertificateUnreadable(f"a CRL could not be read ({exc})") from exc
    return min(dates) if dates else None


def not_after(pem: bytes) -> datetime:
    """The earliest ``notAfter`` of the certificates in ``pem``."""
    dates = []
    for block in _PEM.findall(pem):
        try:
            dates.append(_der_not_after(base64.b64decode(block)))
        except (binascii.Error, IndexError, ValueError) as exc:
            raise CertificateUnreadable(f"a certificate could not be read ({exc})") from exc
    if not dates:
        raise CertificateUnreadable("no PEM certificate in it")
    return min(dates)


def _der_not_after(der: bytes) -> datetime:
    return _der_facts(der)[1]


def _der_facts(der: bytes) -> tuple[str, datetime]:
    """The subject and ``notAfter`` of a certificate:

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, subject,
    ... } }"""
    _, certificate, _ = _element(der, 0)
    _, position, _ = _element(der, certificate)  # into tbsCertificate
    tag, _, end = _element(der, position)
    if tag == 0xA0:  # the explicit version
        position = end
    for _ in range(3):  # serialNumber, signature, issuer
        position = _element(der, position)[2]
    _, validity, validity_end = _element(der, position)
    not_before_end = _element(der, validity)[2]
    tag, start, end = _element(der, not_before_end)
    return _der_name(der, validity_end), _der_time(tag, der[start:end])


def _der_time(tag: int, value: bytes) -> datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ, years 50-99 are 19xx (RFC 5280)
        moment = datetime.strptime(text, "%y%m%d%H%M%SZ")
        if moment.year >= 2050:
            moment = moment.replace(year=moment.year - 100)
    elif tag == 0x18:  # GeneralizedTime: YYYYMMDDHHMMSSZ
        moment = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"a time has ASN.1 tag {tag:#x}")
    return moment.replace(tzinfo=UTC)


def _der_name(der: bytes, position: int) -> str:
    """Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value }, in RFC 4514's order (the
    DER's reversed, ``CN=Example Root,O=Example``) as ``distinguished_name`` writes it."""
    _, position, end = _element(der, position)
    rdns = []
    while position < end:
        _, attribute, rdn_end = _element(der, position)
        parts = []
        while attribute < rdn_end:
            _, inner, attribute = _element(der, attribute)
            _, oid_start, oid_end = _element(der, inner)
            tag, value_start, value_end = _element(der, oid_end)
            value = der[value_start:value_end]
            text = value.decode("utf-16-be" if tag == 0x1E else "utf-8", errors="replace")
            oid = der[oid_start:oid_end]
            parts.append(f"{_NAMES.get(oid, oid.hex())}={text}")
        rdns.append("+".join(parts))
        position = rdn_end
    return ",".join(reversed(rdns))


def _element(der: bytes, position: int) -> tuple[int, int, int]:
    """The DER element at ``position``: its tag, where its contents start and end."""
    tag, length = der[position], der[position + 1]
    position += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[position : position + count], "big")
        position += count
    if position + length > len(der):
        raise ValueError("a DER element runs past the end")
    return tag, position, position + length


class CertificateFiles:
    """Each file's certificates, read again only when the file changed (a few ``stat``
    calls a scrape); empty for a file that cannot be read or holds no certificate."""

    def __init__(self) -> None:
        self._read: dict[Path, tuple[tuple[int, int, int] | None, list[CertificateFacts]]] = {}

    def of(self, path: Path) -> list[CertificateFacts]:
        try:
            st = path.stat()
        except OSError:
            stamp = None
        else:
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        known = self._read.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        found: list[CertificateFacts] = []
        if stamp is not None:
            try:
                found = certificates_in(path.read_bytes())
            except (OSError, CertificateUnreadable):
                found = []
        self._read[path] = (stamp, found)
        return found

    def forget_all_but(self, paths: Iterable[Path]) -> None:
        """Drop the files no longer configured (a reload removed their channel)."""
        keep = set(paths)
        for path in [p for p in self._read if p not in keep]:
            del self._read[path]


class Expiries(CertificateFiles):
    """Each file's expiry: the earliest of its certificates (None: none could be read)."""

    def expiry(self, path: Path) -> datetime | None:
        found = self.of(path)
        return min(c.not_after for c in found) if found else None


class Finding(NamedTuple):
    presented: Presented
    expired: bool
    text: str  # "<file>: the certificate expires on ... (in N days)"


def expiry_findings(
    presented: Iterable[Presented], now: datetime, expiries: Expiries | None = None
) -> list[Finding]:
    """The certificates expired, or expiring within ``EXPIRING_WITHIN`` of ``now``."""
    if expiries is None:
        expiries = Expiries()
    found = []
    for item in presented:
        expiry = expiries.expiry(item.file)
        if expiry is None or expiry - now > EXPIRING_WITHIN:
            continue
        day = expiry.strftime("%Y-%m-%d %H:%M UTC")
        if expiry <= now:
            found.append(Finding(item, True, f"{item.file}: the certificate expired on {day}"))
        else:
            left = _days(expiry - now)
            text = f"{item.file}: the certificate expires on {day} (in {left})"
            found.append(Finding(item, False, text))
    return found


def _days(left: timedelta) -> str:
    days = left.days
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{max(1, round(left.total_seconds() / 3600))} hour(s)"


def log_expiring(log: logging.Logger, presented: Iterable[Presented], now: datetime) -> None:
    """At the engine's start: a warning for each certificate that expires soon, an error
    for each expired (the engine starts all the same: its other channels work)."""
    for finding in expiry_findings(presented, now):
        item = finding.presented
        where = f"channel {item.channel}: " if item.channel else ""
        level = logging.ERROR if finding.expired else logging.WARNING
        log.log(level, "%s%s: %s", where, item.setting, finding.text)
