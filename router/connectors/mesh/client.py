"""A ``mesh-client`` session from a mailbox's configuration (secrets read at connect time)."""

from __future__ import annotations

from mesh_client import MeshClient

from router.config.mesh import MeshMailbox


def open_client(mailbox: MeshMailbox) -> MeshClient:
    """A new session; the caller closes it. TLS: ``ca`` verifies the server, ``cert``/``key``
    authenticate this engine (mutual TLS, as live MESH requires)."""
    cert: tuple[str] | tuple[str, str] | None = None
    if mailbox.cert is not None:
        cert = (str(mailbox.cert), str(mailbox.key)) if mailbox.key else (str(mailbox.cert),)
    verify: str | bool = str(mailbox.ca) if mailbox.ca is not None else mailbox.verify
    return MeshClient(
        mailbox.url,
        mailbox.mailbox,
        mailbox.password.value(),
        shared_key=mailbox.shared_key.value().encode("utf-8"),
        cert=cert,
        verify=verify,
        max_chunk_size=mailbox.max_chunk_size,
        max_retries=mailbox.retries,
        timeout=mailbox.timeout,
        application_name="tie",
    )
