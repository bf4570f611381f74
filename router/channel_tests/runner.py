"""Running one case: the channel's current filter, transform and router, and no network.

Directory lookups are answered from ``endpoints.yaml`` held in memory; the message has a
fixed identity (a UUID derived from the case's name, a fixed receive time), so a mapping
that derives its ids from the message gives the same output on every run.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router import mappings
from router.channel_tests.cases import Case
from router.config import ChannelConfig
from router.directory import Directory, Endpoint
from router.fhir import FHIR_JSON
from router.message import Message
from router.payload import as_payload
from router.pipeline import CompiledChannel, Outcome, PlannedDelivery, compile_channel, process

RECEIVED_AT = datetime(2024, 1, 1, tzinfo=UTC)
_NAMESPACE = uuid.UUID("5b0c8a8e-7f3e-4d4e-9c55-0a3a1c0f7e11")
_SUFFIX = {"hl7v2": ".hl7", FHIR_JSON: ".json", "json": ".json"}


class CaseRunner:
    """Runs cases against ``channels`` (compiled once each) with ``endpoints`` as directory."""

    def __init__(
        self,
        channels: dict[str, ChannelConfig],
        mappings_dir: Path,
        endpoints: list[Endpoint] | None,
    ) -> None:
        self._configs = channels
        self._mappings = mappings_dir
        self._directory = Directory(None, endpoints or [])
        self._compiled: dict[str, CompiledChannel] = {}

    def _channel(self, name: str) -> CompiledChannel:
        if name not in self._compiled:
            config = self._configs.get(name)
            if config is None:
                raise LookupError(f"no channel named {name!r} (the case's folder name)")
            mappings.mount(self._mappings)
            self._compiled[name] = compile_channel(config, self._directory.addresses)
        return self._compiled[name]

    def run(self, case: Case) -> dict[str, str]:
        """The case's outputs as golden files would hold them, by file name."""
        channel = self._channel(case.channel)
        message = Message(
            case.input.read_bytes(),
            case.channel,
            uuid=str(uuid.uuid5(_NAMESPACE, case.id)),
            id=1,
            received_at=RECEIVED_AT,
            content_type=case.content_type,
        )
        return render(process(channel, message))


def render(outcome: Outcome) -> dict[str, str]:
    """``outcome.json`` and one file per delivery, in a form stable and readable in a diff."""
    files: dict[str, str] = {}
    listed = []
    for delivery in outcome.deliveries:
        name = _file_name(delivery, files)
        files[name] = payload_text(delivery)
        listed.append(
            {
                "destination": delivery.destination,
                "file": name,
                "content_type": delivery.content_type,
                **_present(
                    address=delivery.address,
                    failure=delivery.failure,
                    ordering_key=delivery.ordering_key,
                    idempotency_key=delivery.idempotency_key,
                    headers=delivery.headers,
                ),
            }
        )
    summary: dict[str, Any] = {"status": outcome.status}
    if outcome.reason:
        summary["reason"] = _stable_reason(outcome)
    summary["correlations"] = [f"{k}: {v}" for k, v in dict.fromkeys(outcome.correlations)]
    summary["flags"] = outcome.flags
    summary["deliveries"] = listed
    files["outcome.json"] = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    return files


def payload_text(delivery: PlannedDelivery) -> str:
    """HL7 v2 one segment a line; JSON indented; other text as it is."""
    data = as_payload(delivery.payload).read()
    text = data.decode("utf-8", errors="replace")
    if delivery.content_type == "hl7v2":
        segments = text.replace("\r\n", "\r").replace("\n", "\r").rstrip("\r").split("\r")
        return "\n".join(segments) + "\n"
    if _SUFFIX.get(delivery.content_type) == ".json":
        try:
            return json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
        except ValueError:
            return text
    return text


def _file_name(delivery: PlannedDelivery, taken: dict[str, str]) -> str:
    suffix = _SUFFIX.get(delivery.content_type, ".txt")
    name, n = f"{delivery.destination}{suffix}", 1
    while name in taken or name == "outcome.json":
        n += 1
        name = f"{delivery.destination}-{n}{suffix}"
    return name


def _stable_reason(outcome: Outcome) -> str:
    """A mapping's failure is stored as a traceback; its last line is what a golden keeps
    (file paths and line numbers would change with every edit of the mapping)."""
    reason = outcome.reason or ""
    if outcome.status == "error" and reason.startswith("Traceback"):
        lines = [line for line in reason.splitlines() if line.strip()]
        return lines[-1] if lines else reason
    return reason


def _present(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v}
