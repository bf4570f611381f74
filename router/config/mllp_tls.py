"""TLS settings of the MLLP source (a server certificate, optionally clients' too) and of
the MLLP destination (the receiver verified, optionally a client certificate).

Paths are relative to the channel file. A private key's passphrase is never in the file:
``key_password_env`` names the environment variable that holds it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from router.config._base import _Strict

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class MllpServerTls(_Strict):
    """The listener's certificate and key; ``client_ca`` verifies client certificates, which
    ``require_client_cert`` makes mandatory (mutual TLS), and ``crl`` refuses the revoked."""

    cert: Path
    key: Path | None = None  # None: the key is in the ``cert`` file
    key_password_env: str | None = Field(default=None, pattern=_ENV_NAME)
    client_ca: Path | None = None
    require_client_cert: bool = False
    crl: Path | None = None  # revoked client certificates (PEM CRLs of client_ca's CAs)

    @model_validator(mode="after")
    def _clients_verified_against_a_ca(self) -> MllpServerTls:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("require_client_cert needs client_ca: the CA that signs the clients")
        if self.crl is not None and self.client_ca is None:
            raise ValueError("crl needs client_ca: the CA whose revocations it lists")
        return self


class MllpClientTls(_Strict):
    """``ca`` verifies the receiver (default: the system's CAs), whose certificate must name
    ``server_name`` (default: the destination's host); ``cert``/``key``: ours, for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    key_password_env: str | None = Field(default=None, pattern=_ENV_NAME)
    server_name: str | None = Field(default=None, min_length=1, max_length=253)

    @model_validator(mode="after")
    def _key_with_its_cert(self) -> MllpClientTls:
        if self.cert is None and (self.key is not None or self.key_password_env is not None):
            raise ValueError("key and key_password_env need cert: the client certificate")
        return self


def resolve_paths(tls: MllpServerTls | MllpClientTls, base: Path) -> None:
    """Make the certificate paths absolute against the channel file's folder."""
    for name in ("cert", "key", "client_ca", "crl", "ca"):
        value = getattr(tls, name, None)
        if value is not None:
            setattr(tls, name, (base / value).resolve())
