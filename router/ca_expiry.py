"""When the CA certificates the engine trusts expire: each bundle that verifies a peer
(an MLLP source's ``client_ca``, a destination's or an HTTPS client's ``tls.ca``, a MESH
mailbox's ``ca``).

A CA that expires fails every handshake it anchors, but a bundle often holds old roots,
expired and harmless, beside the ones in use: counting the earliest certificate (as for a
certificate presented) would warn for ever. Each certificate is reported on its own, and
each bundle with the moment its trust ends (``trust_ends``), on which the warnings and the
alert act. The CAs of a bundle are told apart by subject (a renewed root keeps its name;
a peer's chain names its root by subject), and that moment is:

- the earliest, among the CAs with a certificate still valid, of each one's last expiry:
  that CA verifies peers today and will not from then on;
- when no CA has a certificate still valid, the last expiry: nothing in the bundle
  verifies anyone.

A CA whose certificates have all expired while another in the bundle is valid counts for
nothing: no handshake has been anchored on it since, and its peers' failures show already.

An MLLP source's ``crl`` is trust material too: past its ``nextUpdate`` OpenSSL refuses
every client certificate, so ``stale_crls`` names such a file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from router.certificate_expiry import (
    EXPIRING_WITHIN,
    CertificateFacts,
    CertificateFiles,
    CertificateUnreadable,
    Presented,
    crl_next_update,
)

if TYPE_CHECKING:
    from router.config import ChannelConfig
    from router.config.mesh import MeshOptions


def trusted_bundles(channels: Iterable[ChannelConfig], mesh: MeshOptions) -> list[Presented]:
    """Every CA file of ``channels`` and of the MESH mailboxes (``role`` is the side that
    verifies the peer with it, as for the certificates presented)."""
    found = []
    for channel in channels:
        source = channel.source
        listening = source.mllp.tls if source.mllp is not None else None
        if listening is not None and listening.client_ca is not None:
            setting, ca = "source.mllp.tls.client_ca", listening.client_ca
            found.append(Presented(channel.name, "", "", "mllp_server", setting, ca))
        forwarding = {
            "http.bars": source.http.bars if source.http is not None else None,
            "proxy": source.proxy,
        }
        for key, options in forwarding.items():
            if options is not None and options.tls.ca is not None:
                setting, ca = f"source.{key}.tls.ca", options.tls.ca
                found.append(Presented(channel.name, "", "", "https_client", setting, ca))
        for name, destination in channel.destinations.items():
            mllp = destination.mllp
            if mllp is not None and mllp.tls is not None and mllp.tls.ca is not None:
                setting = f"destinations.{name}.mllp.tls.ca"
                found.append(Presented(channel.name, name, "", "mllp_client", setting, mllp.tls.ca))
            if destination.http is not None and destination.http.tls.ca is not None:
                setting, ca = f"destinations.{name}.http.tls.ca", destination.http.tls.ca
                found.append(Presented(channel.name, name, "", "https_client", setting, ca))
    for name, box in mesh.mailboxes.items():
        if box.ca is not None:
            setting = f"mesh.mailboxes.{name}.ca"
            found.append(Presented("", "", name, "mesh_client", setting, box.ca))
    return found


class TrustEnds(NamedTuple):
    """When a bundle stops verifying some peer: the earliest last expiry among its CAs
    still valid (``subject``: that CA), or, when none is, its last expiry (``subject``
    None: nothing in it verifies anyone)."""

    moment: datetime
    subject: str | None


def trust_ends(certificates: Iterable[CertificateFacts], now: datetime) -> TrustEnds | None:
    """None for a bundle with no certificate read."""
    last_of: dict[str, datetime] = {}  # each CA (subject): its last certificate's expiry
    for cert in certificates:
        last_of[cert.subject] = max(cert.not_after, last_of.get(cert.subject, cert.not_after))
    if not last_of:
        return None
    valid = [(moment, subject) for subject, moment in last_of.items() if moment > now]
    if valid:
        return TrustEnds(*min(valid))
    return TrustEnds(max(last_of.values()), None)


class BundleFinding(NamedTuple):
    bundle: Presented
    text: str  # "<file>: ..."


def bundle_findings(
    bundles: Iterable[Presented], now: datetime, files: CertificateFiles | None = None
) -> list[BundleFinding]:
    """The bundles whose trust ends within ``EXPIRING_WITHIN`` of ``now``, or has ended."""
    files = files or CertificateFiles()
    found = []
    for bundle in bundles:
        ends = trust_ends(files.of(bundle.file), now)
        if ends is None or ends.moment - now > EXPIRING_WITHIN:
            continue
        if ends.subject is None:
            text = (
                f"{bundle.file}: every CA certificate in it has expired (the last on "
                f"{_day(ends.moment)}): no peer can be verified"
            )
        else:
            text = (
                f"{bundle.file}: the CA {ends.subject} expires on {_day(ends.moment)}, and "
                "the bundle holds no later certificate of it"
            )
        found.append(BundleFinding(bundle, text))
    return found


def revocation_lists(channels: Iterable[ChannelConfig]) -> list[Presented]:
    """Each MLLP source's ``crl``."""
    found = []
    for channel in channels:
        listening = channel.source.mllp.tls if channel.source.mllp is not None else None
        if listening is not None and listening.crl is not None:
            setting, crl = "source.mllp.tls.crl", listening.crl
            found.append(Presented(channel.name, "", "", "mllp_server", setting, crl))
    return found


def stale_crls(crls: Iterable[Presented], now: datetime) -> list[BundleFinding]:
    """The CRLs whose ``nextUpdate`` has passed: OpenSSL then refuses every client
    certificate ("CRL has expired") until a newer CRL is in place."""
    found = []
    for crl in crls:
        try:
            next_update = crl_next_update(crl.file.read_bytes())
        except (OSError, CertificateUnreadable):  # the load names the problem
            continue
        if next_update is not None and next_update <= now:
            text = (
                f"{crl.file}: the CRL's nextUpdate was {_day(next_update)}: every client "
                "certificate is refused until a newer CRL is in place"
            )
            found.append(BundleFinding(crl, text))
    return found


def log_trust_running_out(
    log: logging.Logger, bundles: Iterable[Presented], crls: Iterable[Presented], now: datetime
) -> None:
    """At the engine's start: a warning for each bundle's finding and each stale CRL (the
    engine starts all the same: its other channels work)."""
    for finding in bundle_findings(bundles, now) + stale_crls(crls, now):
        bundle = finding.bundle
        where = f"channel {bundle.channel}: " if bundle.channel else ""
        log.warning("%s%s: %s", where, bundle.setting, finding.text)


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
