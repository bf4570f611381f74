"""Channel models: one source, a filter, a transform and named destinations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from router.conditions import Condition
from router.config._base import (
    CHANNEL_NAME,
    Duration,
    FieldPath,
    MappingRef,
    PositiveDuration,
    Size,
    _require_one,
    _Strict,
)
from router.config.http import HttpSource, HttpTarget, ProxySource
from router.config.mesh import JobTarget, MeshPoll, MeshTarget, SmtpTarget
from router.config.mllp_tls import MllpClientTls, MllpServerTls

# --- sources ---------------------------------------------------------------


class MllpListen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    max_frame: Size = 10 * 1024 * 1024
    idle_timeout: PositiveDuration = 300.0
    max_connections: int = Field(default=256, ge=1)
    tls: MllpServerTls | None = None


class ChannelFeed(_Strict):
    """Messages arrive from other channels' ``channel`` destinations."""


SOURCES = ("mllp", "channel", "mesh", "http", "proxy", "file")


class FilePoll(_Strict):
    """A folder polled for files (router/connectors/file_source.py): each file taken is
    stored, then deleted, or moved to ``move_to``; one that cannot be read as its
    ``content_type`` is stored as ``error`` and moved to ``error_to``."""

    directory: Path
    pattern: str = "*"
    interval: Duration = Field(default=5.0, gt=0)
    # A file is taken once unchanged this long: a writer may still be writing a younger one.
    settle: Duration = Field(default=1.0, ge=0)
    content_type: str = Field(default="hl7v2", min_length=1, max_length=64)
    max_size: Size = Field(default=100 * 1024 * 1024, gt=0)
    move_to: Path | None = None
    error_to: Path | None = None  # default: <directory>/error

    @field_validator("pattern")
    @classmethod
    def _plain_pattern(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value:
            raise ValueError("a file pattern matches names in the folder: no path separators")
        return value


class SourceConfig(_Strict):
    mllp: MllpListen | None = None
    channel: ChannelFeed | None = None
    mesh: MeshPoll | None = None
    http: HttpSource | None = None
    proxy: ProxySource | None = None
    file: FilePoll | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceConfig:
        _require_one(self, SOURCES, "source")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SOURCES if getattr(self, k) is not None)


# --- destinations ----------------------------------------------------------

AckAction = Literal["sent", "retry", "fail"]
DEFAULT_ON_ACK: dict[str, AckAction] = {
    "AA": "sent",
    "CA": "sent",
    "AE": "retry",
    "CE": "retry",
    "AR": "fail",
    "CR": "fail",
}
FILE_NAME_FIELDS = (
    "channel",
    "destination",
    "message_id",
    "message_uuid",
    "delivery_id",
    "control_id",
)


class MllpTarget(_Strict):
    # Both required unless the destination looks its address up in the directory.
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    connect_timeout: PositiveDuration = 10.0
    ack_timeout: PositiveDuration = 30.0
    # A connection unused this long is closed, and the next delivery opens a new one: a
    # firewall may drop a silent session without telling either end, and the next message
    # would only be found unanswered after ack_timeout.
    idle_timeout: PositiveDuration = 300.0
    on_ack: dict[str, AckAction] = Field(default_factory=lambda: dict(DEFAULT_ON_ACK))
    tls: MllpClientTls | None = None

    @field_validator("on_ack")
    @classmethod
    def _over_defaults(cls, value: dict[str, AckAction]) -> dict[str, AckAction]:
        """``{AE: fail}`` changes AE only: the codes not named keep their default action."""
        return {**DEFAULT_ON_ACK, **{code.upper(): action for code, action in value.items()}}


class FileTarget(_Strict):
    directory: Path
    name: str = "{channel}-{message_id}-{delivery_id}.hl7"

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith("."):
            raise ValueError("a file name template cannot contain a path or start with '.'")
        try:
            value.format(**dict.fromkeys(FILE_NAME_FIELDS, "1"))
        except (KeyError, IndexError, AttributeError, ValueError) as exc:
            raise ValueError(
                f"bad file name template ({type(exc).__name__}: {exc}); "
                f"placeholders are {', '.join('{' + f + '}' for f in FILE_NAME_FIELDS)}"
            ) from exc
        return value


class ChannelTarget(_Strict):
    channel: str


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=10, ge=1)
    backoff: tuple[Duration, Duration] = (1.0, 300.0)

    @field_validator("backoff")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0 or value[1] < value[0]:
            raise ValueError("backoff is [min, max] with 0 < min <= max")
        return value

    def delay(self, attempts: int) -> float:
        """Exponential backoff: min, 2*min, 4*min ... capped at max."""
        low, high = self.backoff
        doublings = min(max(0, attempts - 1), 64)  # 2 ** 1024 would not fit a float
        return min(high, low * 2**doublings)


class DirectoryLookup(_Strict):
    """Recipients from the endpoint directory instead of a fixed address (router/directory/).

    ``target`` reads identifiers from the message: ``ods:RYE``, a FHIR ``system|value``, or
    bare values of ``kind``. ``subscribers`` adds every endpoint subscribed to all messages
    of the interaction. Each recipient gets a delivery of its own.
    """

    interaction: str = Field(min_length=1, max_length=255)
    # One path, or several tried in order: the first that has a value names the recipients
    # (e.g. ORC-21.10, the v2.5 organisation identifier, then ORC-21.3 as older senders write it).
    target: FieldPath | list[FieldPath] | None = None
    kind: Literal["ods", "dos", "asid"] | None = None
    subscribers: bool = False
    # ``error``: the message is an error naming the unknown recipient. ``fail``: the message is
    # processed and this destination gets a ``failed`` delivery with the reason, so that one
    # unknown recipient is visible (and resendable after reprocessing) while other
    # destinations of the message still get theirs.
    unresolved: Literal["error", "fail"] = "error"

    @property
    def targets(self) -> list[str]:
        if self.target is None:
            return []
        return [self.target] if isinstance(self.target, str) else list(self.target)

    @model_validator(mode="after")
    def _some_recipient(self) -> DirectoryLookup:
        if self.target is None and not self.subscribers:
            raise ValueError("a directory lookup needs a 'target', 'subscribers: true' or both")
        return self


class HoldPolicy(_Strict):
    """Deliveries wait as ``held`` until ``approvals`` distinct people release their batch.

    ``summary`` (``module:function``) labels each message for the batch summary, e.g.
    ``{"ods": "A12345"}``; the summary counts deliveries per label value.
    """

    approvals: int = Field(ge=1, le=10)
    summary: MappingRef | None = None


TRANSPORTS = ("mllp", "file", "channel", "mesh", "smtp", "http", "job")
# Transports whose address a directory lookup can supply.
ADDRESSED = ("mllp", "http", "mesh")


class DestinationConfig(_Strict):
    when: list[Condition] = Field(default_factory=list)
    transform: MappingRef | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    ordered: bool | None = None
    order_by: FieldPath | None = None
    directory: DirectoryLookup | None = None
    hold: HoldPolicy | None = None
    mllp: MllpTarget | None = None
    file: FileTarget | None = None
    channel: ChannelTarget | None = None
    mesh: MeshTarget | None = None
    smtp: SmtpTarget | None = None
    job: JobTarget | None = None
    http: HttpTarget | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DestinationConfig:
        _require_one(self, TRANSPORTS, "destination")
        if self.order_by and self.ordered is False:
            raise ValueError("order_by needs an ordered destination")
        if self.directory is not None and self.kind not in ADDRESSED:
            raise ValueError(
                f"a {self.kind} destination has no address to look up in the directory "
                f"(directory works with {', '.join(ADDRESSED)})"
            )
        if (
            self.mllp is not None
            and self.directory is None
            and not (self.mllp.host and self.mllp.port)
        ):
            raise ValueError("an mllp destination needs host and port (or a directory lookup)")
        if self.http is not None and self.directory is None and not self.http.url:
            raise ValueError("an http destination needs a url (or a directory lookup)")
        if self.mesh is not None and self.directory is None and not self.mesh.to:
            raise ValueError("a mesh destination needs 'to' (or a directory lookup)")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in TRANSPORTS if getattr(self, k) is not None)

    @property
    def is_ordered(self) -> bool:
        """MLLP is ordered unless told otherwise; other transports are not."""
        if self.ordered is not None:
            return self.ordered
        return self.kind == "mllp" or self.order_by is not None


# --- channel ---------------------------------------------------------------


class IdempotentReceiver(_Strict):
    window: Duration = 86400.0


class RetentionPolicy(_Strict):
    """How long finished messages are kept (router/retention.py); ``archive`` is a folder
    they are written to, as gzipped JSON Lines, before they are removed."""

    keep: Duration = Field(gt=0)
    archive: Path | None = None


class UnmatchedFlag(_Strict):
    """Flag a message whose correlation ``key`` no earlier message of ``channels`` carries.

    E.g. a result (ORU^R01) whose placer order number matches no order (OML^O21) seen by
    ``lab-orders``: the flag is stored with the message and searchable (``--flag``).
    """

    key: str = Field(min_length=1, max_length=64)
    channels: list[str] = Field(min_length=1)
    flag: str = Field(default="unmatched-order", pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")


class ChannelConfig(_Strict):
    name: str
    description: str = ""
    enabled: bool = True
    source: SourceConfig
    validate_: Literal["none", "strict"] = Field(default="none", alias="validate")
    idempotent: IdempotentReceiver | None = None
    filter: list[Condition] = Field(default_factory=list)
    transform: MappingRef | None = None
    # Each key reads one path or several (their values all become the key's values).
    correlate: dict[str, FieldPath | list[FieldPath]] = Field(default_factory=dict)
    unmatched: UnmatchedFlag | None = None
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    retention: RetentionPolicy | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not CHANNEL_NAME.match(value):
            raise ValueError("a channel name is lower-case letters, digits, '-' and '_'")
        return value

    @field_validator("destinations")
    @classmethod
    def _valid_destination_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not CHANNEL_NAME.match(name):
                raise ValueError(
                    f"destination name {name!r}: use lower-case letters, digits, - and _"
                )
        return value

    @model_validator(mode="after")
    def _duplicates_outlive_their_window(self) -> ChannelConfig:
        """The idempotent receiver recognises a repeat by its stored original."""
        if (
            self.retention is not None
            and self.idempotent is not None
            and self.retention.keep < self.idempotent.window
        ):
            raise ValueError(
                "retention.keep is shorter than idempotent.window: a repeat of a pruned "
                "message would be taken as new"
            )
        return self

    @model_validator(mode="after")
    def _unmatched_key_is_correlated(self) -> ChannelConfig:
        if self.unmatched is not None and self.unmatched.key not in self.correlate:
            raise ValueError(
                f"unmatched.key {self.unmatched.key!r} is not one of this channel's correlate keys"
            )
        return self

    @field_validator("idempotent")
    @classmethod
    def _idempotent_where_it_applies(
        cls, value: IdempotentReceiver | None, info: ValidationInfo
    ) -> IdempotentReceiver | None:
        """Accepting the setting where it is not applied would promise a window (a
        deduplication) that never happens."""
        source = info.data.get("source")
        if value is None or source is None:
            return value
        if source.mesh is not None:
            raise ValueError(
                "a mesh source always recognises a message MESH offers again (its message id "
                "and sender, for 30 days): idempotent is not applied, remove it"
            )
        if source.channel is not None:
            raise ValueError(
                "a channel source never stores a delivery twice (the feeding delivery and the "
                "new message commit together): idempotent is not applied, remove it"
            )
        return value

    @model_validator(mode="after")
    def _synchronous_sources_route_themselves(self) -> ChannelConfig:
        """BaRS routing and the proxy answer with the receiver's answer: nothing to dispatch."""
        synchronous = self.source.proxy is not None or (
            self.source.http is not None and self.source.http.bars is not None
        )
        if synchronous and (self.destinations or self.filter or self.transform):
            raise ValueError(
                "a bars or proxy source forwards each request itself and answers with the "
                "receiver's answer: it takes no filter, transform or destinations"
            )
        if synchronous and self.idempotent is not None:
            # A repeat is forwarded again (the receiver recognises a repeated Bundle.id):
            # accepting the setting would promise a deduplication that never happens.
            raise ValueError(
                "a bars or proxy source forwards every request, repeats included (the "
                "receiver recognises a repeated Bundle.id): idempotent is not applied, remove it"
            )
        return self
