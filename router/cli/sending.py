"""``run.py send``: messages from files, over the channel's own source protocol."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

from router.cli.output import CommandError
from router.config import ChannelConfig, EngineConfig, MllpListen
from router.connectors.mllp.framing import FrameTooLarge, TruncatedFrame, frame, read_frame
from router.hl7v2.ack import parse_ack
from router.hl7v2.batch import split_messages
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import parse_header

Client = tuple[Path | None, Path | None]  # a certificate and its key, for mutual TLS


def send_files(
    config: EngineConfig,
    channel: ChannelConfig,
    files: list[Path],
    *,
    timeout: float,
    client: Client = (None, None),
) -> list[dict[str, Any]]:
    batches = [(path, read_messages(path)) for path in files]
    if channel.source.mllp is not None:
        return asyncio.run(_send_mllp(channel, batches, timeout, client))
    if channel.source.channel is not None:
        return _inject(config, channel, batches)
    # Storing into another source would skip its protocol (an HL7 v2 file in a FHIR channel,
    # a file the folder poller never saw): say how its senders reach it instead.
    raise CommandError(
        f"channel {channel.name} has a {channel.source.kind} source: run.py send speaks MLLP to "
        f"an mllp source and stores into a channel source; {_how_to_reach(channel)}",
        2,
    )


def _how_to_reach(channel: ChannelConfig) -> str:
    source = channel.source
    if source.file is not None:
        return f"put the files in {source.file.directory}"
    if source.mesh is not None:
        return f"send them to its MESH mailbox {source.mesh.mailbox!r}"
    if source.http is not None:
        return f"POST FHIR to /fhir/{channel.name}/"
    return "send requests to /proxy/"


def read_messages(path: Path) -> list[bytes]:
    """The messages in one file; a file that holds none is the operator's mistake, not a crash."""
    try:
        found = split_messages(path.read_bytes())
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from exc
    except Er7Error as exc:
        raise CommandError(f"{path}: not HL7 v2: {exc}") from exc
    if not found:
        raise CommandError(f"{path}: no message (no line starts with MSH)")
    return found


async def _send_mllp(
    channel: ChannelConfig,
    batches: list[tuple[Path, list[bytes]]],
    timeout: float,
    client: Client,
) -> list[dict[str, Any]]:
    source = channel.source.mllp
    assert source is not None
    host = "127.0.0.1" if source.host in ("0.0.0.0", "::") else source.host
    context = _engine_tls(source, client, channel.name)
    try:
        reader, writer = await asyncio.open_connection(host, source.port, ssl=context)
    except ssl.SSLError as exc:
        needs = f" (if it requires a client certificate: {_CERT_OPTIONS})" if not client[0] else ""
        raise CommandError(
            f"channel {channel.name}: TLS handshake with {host}:{source.port} failed{needs}: "
            f"{exc.reason or exc}"
        ) from exc
    except OSError as exc:
        raise CommandError(
            f"channel {channel.name} does not answer on {host}:{source.port} "
            f"(is the engine running?): {exc.strerror or exc}"
        ) from exc
    if context is not None:
        _same_certificate(writer, source, channel.name)
    results = []
    try:
        for path, batch in batches:
            for message in batch:
                try:
                    writer.write(frame(message))
                    await writer.drain()
                    async with asyncio.timeout(timeout):
                        answer = await read_frame(reader, 10 * 1024 * 1024)
                except TimeoutError:
                    results.append(_stopped(path, message, f"no answer within {timeout:g}s"))
                    return results
                except (OSError, TruncatedFrame, FrameTooLarge) as exc:
                    # The rows so far say which messages were accepted: keep them.
                    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                    lost = f"connection lost: {reason}"
                    refused = not results and context is not None and isinstance(exc, OSError)
                    results.append(
                        _refused_on_tls(path, message, source, client, lost)
                        if refused
                        else _stopped(path, message, lost)
                    )
                    return results
                if answer is None and not results and context is not None:
                    closed = "connection closed without an answer"
                    results.append(_refused_on_tls(path, message, source, client, closed))
                    return results
                results.append(_result(path, message, answer))
    finally:
        writer.close()
    return results


_CERT_OPTIONS = "pass --cert CERT.pem, and --key KEY.pem unless the key is in CERT.pem"


def _engine_tls(source: MllpListen, client: Client, name: str) -> ssl.SSLContext | None:
    """For a TLS source, a context that presents ``client`` and leaves the server's
    certificate to ``_same_certificate``: the engine is ours, its certificate file at hand,
    where the CA that signed it may not be. A source that requires a client certificate
    is not even tried without one: under TLS 1.3 the refusal comes after the handshake,
    as a connection closed with no answer, which says nothing of why."""
    if source.tls is None:
        return None
    if source.tls.require_client_cert and client[0] is None:
        raise CommandError(
            f"channel {name}: the server requires a client certificate "
            f"(source.mllp.tls.require_client_cert): {_CERT_OPTIONS}, a certificate "
            f"issued by a CA in {source.tls.client_ca} (source.mllp.tls.client_ca); "
            "nothing was sent"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    cert, key = client
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise CommandError(f"--cert {cert}: {getattr(exc, 'reason', None) or exc}") from exc
    return context


def _same_certificate(writer: asyncio.StreamWriter, source: MllpListen, name: str) -> None:
    """The listener presented the certificate of the channel's ``source.mllp.tls.cert``
    (else another program holds the port, and must not be sent the messages)."""
    assert source.tls is not None
    presented = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    text = source.tls.cert.read_text(encoding="ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    if begin < 0 or presented != ssl.PEM_cert_to_DER_cert(text[begin:end]):
        writer.close()
        raise CommandError(
            f"channel {name}: the server on port {source.port} did not present the "
            f"certificate in {source.tls.cert} (source.mllp.tls.cert); nothing was sent"
        )


def _refused_on_tls(
    path: Path, message: bytes, source: MllpListen, client: Client, what: str
) -> dict[str, Any]:
    """The first message's row when the connection ended without answering it: over TLS
    that is the server refusing the client certificate, or its absence (TLS 1.3 says so
    after the handshake, by closing or resetting the connection)."""
    assert source.tls is not None
    if client[0] is None:
        why = f"the server may require a client certificate: {_CERT_OPTIONS}"
    else:
        cas = source.tls.client_ca or "the server's client_ca"
        why = (
            f"the server may not have accepted the client certificate in {client[0]} (it "
            f"must be issued by a CA in {cas} and be in date; the engine's log says why)"
        )
    return _stopped(path, message, f"{what}: {why}")


def _stopped(path: Path, message: bytes, reason: str) -> dict[str, Any]:
    """The row of the message that got no answer; the messages after it were not sent."""
    row = _result(path, message, None)
    row["text"] = f"{reason}; the rest were not sent"
    return row


def _result(path: Path, message: bytes, answer: bytes | None) -> dict[str, Any]:
    try:
        control_id = parse_header(message).control_id
    except Er7Error:
        control_id = None
    row: dict[str, Any] = {"file": str(path), "control_id": control_id, "ack": None, "text": ""}
    if answer is None:
        row["text"] = "connection closed without an answer"
        return row
    try:
        ack = parse_ack(answer)
    except Er7Error as exc:
        row["text"] = f"unreadable answer: {exc}"
        return row
    row.update(ack=ack.code, text="; ".join(x for x in (ack.text, ack.error) if x))
    row["raw_ack"] = answer.decode("utf-8", errors="replace").replace("\r", "\n")
    return row


def _inject(
    config: EngineConfig, channel: ChannelConfig, batches: list[tuple[Path, list[bytes]]]
) -> list[dict[str, Any]]:
    """A channel fed by other channels has no socket: store the messages directly."""
    from router.connectors.hl7_inbound import hl7_inbound
    from router.store.inbound import write_inbound
    from router.store.migrate import upgrade
    from router.store.opening import open_store
    from router.store.placement import placed

    store = open_store(config)
    upgrade(store)
    items = [
        (path, hl7_inbound(channel.name, m, source={"protocol": "cli", "file": str(path)}))
        for path, batch in batches
        for m in batch
    ]
    for _, item in items:  # a large one goes to the blob store before its row commits
        item.raw = placed(store.blobs, item.raw)
    with store.begin() as conn:
        receipts = write_inbound(conn, [item for _, item in items])
    return [
        {"file": str(path), "control_id": item.control_id, "ack": "stored", "text": receipt.uuid}
        for (path, item), receipt in zip(items, receipts, strict=True)
    ]
