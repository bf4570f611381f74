"""The view of one stored message that filters, routers and mappings work on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from router.hl7v2.er7 import Er7Message

MAX_KEY = 64  # correlations.key in the store


@dataclass
class Message:
    """A received message: raw bytes plus lazy parsed forms.

    ``values`` serves declarative conditions (fast ER7 reader); ``hl7apy``
    gives the structure-aware tree for mappings that need groups. Mappings add
    correlation keys with ``correlate``.
    """

    raw: bytes
    channel: str
    uuid: str = ""
    id: int = 0
    received_at: datetime | None = None
    content_type: str = "hl7v2"
    source: dict[str, Any] = field(default_factory=dict)
    correlations: list[tuple[str, str]] = field(default_factory=list)

    @cached_property
    def er7(self) -> Er7Message:
        return Er7Message(self.raw)

    @cached_property
    def text(self) -> str:
        return self.raw.decode("utf-8", errors="replace")

    def get(self, path: str) -> str | None:
        """The first value at an HL7 v2 field path such as ``PID-3(2).1``."""
        return self.er7.get(path)

    def values(self, path: str) -> list[str]:
        """Every value at a field path, across repeated fields and segments."""
        return self.er7.get_all(path)

    @cached_property
    def hl7apy(self) -> Any:
        """The hl7apy message tree, parsed with groups (costly: only when asked)."""
        from router.hl7v2.structure import parse_structured

        return parse_structured(self.raw)

    def correlate(self, key: str, value: str | None) -> None:
        """Tie this message to a conversation by ``key`` (e.g. ``placer_order``).

        A key longer than the store's 64 characters is this message's error here,
        rather than a failed write that would hold up every message processed with it.
        """
        if not key or len(key) > MAX_KEY:
            raise ValueError(f"correlation key {key!r} must have 1 to {MAX_KEY} characters")
        if value:
            self.correlations.append((key, value[:255]))


@dataclass(frozen=True)
class Output:
    """A payload a mapping returns when it is not of the message's own content type."""

    body: bytes | str
    content_type: str = "hl7v2"

    @property
    def data(self) -> bytes:
        return self.body.encode("utf-8") if isinstance(self.body, str) else self.body
