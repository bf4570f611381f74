"""SSL contexts for MLLP over TLS, built from a channel's ``tls`` settings.

Each file is checked on its own first, so that a problem names the key that holds the
wrong file (``cert``, ``key``, ``client_ca``, ``crl``, ``ca``) rather than OpenSSL's "PEM lib".
TLS 1.2 is the oldest version either side speaks.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from router.certificate_expiry import CertificateUnreadable, crl_next_update, not_after
from router.config import ChannelConfig
from router.config.mllp_tls import MllpClientTls, MllpServerTls

log = logging.getLogger(__name__)


class TlsFileError(Exception):
    """A certificate, key or CA file that cannot be used; ``key`` is its setting's name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def server_context(tls: MllpServerTls) -> ssl.SSLContext:
    """The listener's context: its certificate, and clients verified against ``client_ca``
    (required with ``require_client_cert``, else checked only when a client presents one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, tls.cert, tls.key, tls.key_password_env)
    if tls.client_ca is not None:
        _load_ca(context, "client_ca", tls.client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    if tls.crl is not None:
        _load_crl(context, tls.crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


class Served(NamedTuple):
    """A listener's context, and the dates of the files it was built from."""

    context: ssl.SSLContext
    cert_expiry: datetime | None
    crl_next_update: datetime | None


def _built(tls: MllpServerTls) -> Served:
    """The context and its files' dates, read from the bytes read just before it (a file
    replaced in between changes its stamp: it is read again at the next check)."""
    cert, crl = _bytes_of(tls.cert), _bytes_of(tls.crl)
    context = server_context(tls)
    try:
        expiry = not_after(cert)
    except CertificateUnreadable:
        expiry = None
    try:
        next_update = crl_next_update(crl)
    except CertificateUnreadable:
        next_update = None
    return Served(context, expiry, next_update)


def _bytes_of(path: Path | None) -> bytes:
    try:
        return path.read_bytes() if path is not None else b""
    except OSError:  # server_context names the problem
        return b""


class ServerCertificates:
    """The listener's context, built anew when one of its files changes (checked at each
    new connection, a few ``stat`` calls): a renewed certificate is presented from the next
    connection on, without a restart or reload. Files that do not make a context (a
    certificate replaced before its key) leave the last good one in use, with a warning.

    ``/metrics`` asks from its own thread which certificate the next connection is given
    (``served_expiry``), hence the lock."""

    def __init__(self, tls: MllpServerTls, channel: str) -> None:
        self._tls = tls
        self._channel = channel
        files = (tls.cert, tls.key, tls.client_ca, tls.crl)
        self._files = [p for p in files if p is not None]
        self._lock = threading.RLock()
        self._stamp = self._stamps()
        self._served = _built(tls)
        self.context = self._served.context

    def current(self) -> ssl.SSLContext:
        with self._lock:
            stamp = self._stamps()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._served = _built(self._tls)
                except TlsFileError as exc:
                    log.warning(
                        "channel %s: source.mllp.tls.%s: %s; the certificates read before "
                        "stay in use",
                        self._channel,
                        exc.key,
                        exc,
                    )
                else:
                    self.context = self._served.context
                    log.info("channel %s: certificate files changed; read again", self._channel)
            return self.context

    def served_expiry(self) -> datetime | None:
        """When the certificate the next connection is presented with expires: the last
        good pair's, not a renewed file's that does not load (None: no date in it)."""
        with self._lock:
            self.current()
            return self._served.cert_expiry

    def served_crl_next_update(self) -> datetime | None:
        """The ``nextUpdate`` of the CRL the next connection is checked against."""
        with self._lock:
            self.current()
            return self._served.crl_next_update

    def _stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        found = []
        for path in self._files:
            try:
                st = path.stat()
            except OSError:
                found.append(None)
            else:
                found.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(found)


def client_context(tls: MllpClientTls) -> ssl.SSLContext:
    """The destination's context: the receiver verified against ``ca`` (default: the
    system's CAs) with its host name checked; our certificate presented when set."""
    if tls.ca is None:
        context = ssl.create_default_context()
    else:  # this CA only, not the system's as well
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks host names
        _load_ca(context, "ca", tls.ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None:
        _load_identity(context, tls.cert, tls.key, tls.key_password_env)
    return context


def _readable(key: str, path: Path) -> None:
    if not path.is_file():
        raise TlsFileError(key, f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise TlsFileError(key, f"{path}: not readable by this process")


def _load_ca(context: ssl.SSLContext, key: str, path: Path) -> None:
    _readable(key, path)
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TlsFileError(key, f"{path}: no PEM certificate could be read ({exc.reason})") from exc


def _load_crl(context: ssl.SSLContext, path: Path) -> None:
    _readable("crl", path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise TlsFileError("crl", f"{path}: cannot be read ({exc.strerror})") from exc
    if b"-----BEGIN X509 CRL-----" not in text:
        raise TlsFileError("crl", f"{path}: no PEM CRL in it")
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise TlsFileError("crl", f"{path}: the CRL could not be read ({exc.reason})") from exc


def _load_identity(
    context: ssl.SSLContext, cert: Path, key: Path | None, password_env: str | None
) -> None:
    """Our certificate and its key, which must match it."""
    _readable("cert", cert)
    try:  # the certificate alone, on a scratch context: its own problem is named as such
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        raise TlsFileError("cert", f"{cert}: no PEM certificate could be read") from exc
    if key is not None:
        _readable("key", key)
    password = ""  # never None: OpenSSL would ask for an encrypted key's passphrase on the tty
    if password_env is not None:
        if password_env not in os.environ:
            message = f"environment variable {password_env} is not set"
            raise TlsFileError("key_password_env", message)
        password = os.environ[password_env]
    try:
        context.load_cert_chain(str(cert), str(key) if key is not None else None, password)
    except ssl.SSLError as exc:
        where = "key" if key is not None else "cert"
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsFileError(where, f"{key or cert}: the key does not match {cert}") from exc
        hint = "" if password_env else " (an encrypted key needs key_password_env)"
        raise TlsFileError(
            where, f"{key or cert}: the private key cannot be read ({exc.reason}){hint}"
        ) from exc


def channel_tls_problems(channel: ChannelConfig) -> list[tuple[str, str]]:
    """(key path, problem) for each MLLP ``tls`` of ``channel`` whose files cannot be used,
    so that ``run.py check`` and the engine's start name them before a peer meets them."""
    found: list[tuple[str, str]] = []
    source = channel.source.mllp
    if source is not None and source.tls is not None:
        try:
            server_context(source.tls)
        except TlsFileError as exc:
            found.append((f"source.mllp.tls.{exc.key}", str(exc)))
    for name, destination in channel.destinations.items():
        if destination.mllp is not None and destination.mllp.tls is not None:
            try:
                client_context(destination.mllp.tls)
            except TlsFileError as exc:
                found.append((f"destinations.{name}.mllp.tls.{exc.key}", str(exc)))
    return found
