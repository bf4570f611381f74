"""Engine and channel configuration: YAML files validated with pydantic.

Every error names the file, the key path inside it and what is wrong, so an
integration engineer can fix a channel without reading a traceback.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from router.conditions import Condition
from router.http_config import HttpSource, HttpTarget, ProxySource, resolve_tls
from router.mesh_config import JobTarget, MeshOptions, MeshPoll, MeshTarget, SmtpTarget
from router.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
CHANNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAPPING_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_field_path(value: str | None) -> str | None:
    if value is not None:
        from router.field_paths import check_field_path

        check_field_path(value)
    return value


def _check_mapping_ref(value: str | None) -> str | None:
    if value is not None and not MAPPING_REF.match(value):
        raise ValueError(f"{value!r} is not 'module:function' (e.g. pathology:normalise_order)")
    return value


FieldPath = Annotated[str, BeforeValidator(_check_field_path)]
MappingRef = Annotated[str, BeforeValidator(_check_mapping_ref)]


# --- sources ---------------------------------------------------------------


class MllpListen(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    max_frame: Size = 10 * 1024 * 1024
    idle_timeout: Duration = 300.0
    max_connections: int = Field(default=256, ge=1)


class ChannelFeed(_Strict):
    """Messages arrive from other channels' ``channel`` destinations."""


SOURCES = ("mllp", "channel", "mesh", "http", "proxy")


class SourceConfig(_Strict):
    mllp: MllpListen | None = None
    channel: ChannelFeed | None = None
    mesh: MeshPoll | None = None
    http: HttpSource | None = None
    proxy: ProxySource | None = None

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
    connect_timeout: Duration = 10.0
    ack_timeout: Duration = 30.0
    on_ack: dict[str, AckAction] = Field(default_factory=lambda: dict(DEFAULT_ON_ACK))

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
        return min(high, low * 2 ** max(0, attempts - 1))


class DirectoryLookup(_Strict):
    """Recipients from the endpoint directory instead of a fixed address (router/directory.py).

    ``target`` reads identifiers from the message: ``ods:RYE``, a FHIR ``system|value``, or
    bare values of ``kind``. ``subscribers`` adds every endpoint subscribed to all messages
    of the interaction. Each recipient gets a delivery of its own.
    """

    interaction: str = Field(min_length=1, max_length=255)
    target: FieldPath | None = None
    kind: Literal["ods", "dos", "asid"] | None = None
    subscribers: bool = False

    @model_validator(mode="after")
    def _some_recipient(self) -> DirectoryLookup:
        if self.target is None and not self.subscribers:
            raise ValueError("a directory lookup needs a 'target', 'subscribers: true' or both")
        return self


TRANSPORTS = ("mllp", "file", "channel", "mesh", "smtp", "http", "job")
# Transports whose address a directory lookup can supply.
ADDRESSED = ("mllp", "http")


class DestinationConfig(_Strict):
    when: list[Condition] = Field(default_factory=list)
    transform: MappingRef | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    ordered: bool | None = None
    order_by: FieldPath | None = None
    directory: DirectoryLookup | None = None
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


class ChannelConfig(_Strict):
    name: str
    description: str = ""
    enabled: bool = True
    source: SourceConfig
    validate_: Literal["none", "strict"] = Field(default="none", alias="validate")
    idempotent: IdempotentReceiver | None = None
    filter: list[Condition] = Field(default_factory=list)
    transform: MappingRef | None = None
    correlate: dict[str, FieldPath] = Field(default_factory=dict)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)

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
        return self


# --- engine ----------------------------------------------------------------


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class SqliteOptions(_Strict):
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    busy_timeout: Duration = 5.0


class DispatchOptions(_Strict):
    lease: Duration = 30.0
    batch: int = Field(default=200, ge=1)
    poll_interval: Duration = 1.0
    lanes: int = Field(default=8, ge=1)


class ProcessingOptions(_Strict):
    batch: int = Field(default=500, ge=1)


class BlobOptions(_Strict):
    """Where payloads above ``threshold`` are kept (default: ``blobs/`` beside a SQLite file)."""

    directory: Path | None = None
    threshold: Size = 1024 * 1024


class EngineConfig(_Strict):
    store: str = "sqlite:///data/tie.db"
    channels: Path = Path("../channels")
    mappings: Path = Path("../mappings")
    # Seeds the endpoint directory on every start; a missing file leaves the table as it is.
    endpoints: Path = Path("endpoints.yaml")
    http: HttpConfig = Field(default_factory=HttpConfig)
    node: str = Field(default_factory=socket.gethostname)
    sqlite: SqliteOptions = Field(default_factory=SqliteOptions)
    dispatch: DispatchOptions = Field(default_factory=DispatchOptions)
    processing: ProcessingOptions = Field(default_factory=ProcessingOptions)
    blobs: BlobOptions = Field(default_factory=BlobOptions)
    mesh: MeshOptions = Field(default_factory=MeshOptions)
    base_dir: Path = Field(default=Path("."), exclude=True)


# --- loading ---------------------------------------------------------------


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in configuration files."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def load_engine(path: Path | str) -> EngineConfig:
    """Read engine.yaml; relative paths and SQLite files resolve against its folder.

    ``TIE_STORE`` in the environment overrides ``store``, so that database
    credentials never need to live in the file.
    """
    path = Path(path).resolve()
    data = _read_yaml(path)
    if os.environ.get("TIE_STORE"):
        data["store"] = os.environ["TIE_STORE"]
    config = _validate(EngineConfig, data, path)
    base = path.parent
    if config.blobs.directory is not None:
        config.blobs.directory = (base / config.blobs.directory).resolve()
    for box in config.mesh.mailboxes.values():
        for name in ("cert", "key", "ca"):
            if getattr(box, name) is not None:
                setattr(box, name, (base / getattr(box, name)).resolve())
        for secret in (box.password, box.shared_key):
            if secret.file is not None:
                secret.file = (base / secret.file).resolve()
    return config.model_copy(
        update={
            "base_dir": base,
            "channels": (base / config.channels).resolve(),
            "mappings": (base / config.mappings).resolve(),
            "endpoints": (base / config.endpoints).resolve(),
            "store": resolve_store_url(config.store, base),
        }
    )


def resolve_store_url(url: str, base: Path) -> str:
    """Make a relative SQLite path absolute against ``base``; other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def load_channel(path: Path) -> ChannelConfig:
    """One channel file, with relative file-destination directories resolved."""
    config = _validate(ChannelConfig, _read_yaml(path), path)
    if config.name != path.stem:
        raise ConfigError(
            [ConfigProblem(str(path), "name", f"must match the file name {path.stem!r}")]
        )
    for destination in config.destinations.values():
        if destination.file is not None:
            destination.file.directory = (path.parent / destination.file.directory).resolve()
        if destination.http is not None:
            resolve_tls(destination.http.tls, path.parent)
    if config.source.http is not None and config.source.http.bars is not None:
        resolve_tls(config.source.http.bars.tls, path.parent)
    if config.source.proxy is not None:
        resolve_tls(config.source.proxy.tls, path.parent)
    return config


def load_channels(directory: Path) -> dict[str, ChannelConfig]:
    """Every ``*.yaml`` in ``directory``; all problems are collected before raising."""
    channels: dict[str, ChannelConfig] = {}
    problems: list[ConfigProblem] = []
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), "", "channels folder not found")])
    for path in sorted(directory.glob("*.y*ml")):
        try:
            channels[path.stem] = load_channel(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.extend(_cross_check(channels, directory))
    if problems:
        raise ConfigError(problems)
    return channels


def _cross_check(channels: dict[str, ChannelConfig], directory: Path) -> list[ConfigProblem]:
    problems = []
    listeners: dict[tuple[str, int], str] = {}
    proxies = [name for name, channel in channels.items() if channel.source.proxy is not None]
    for name in proxies[1:]:
        problems.append(
            ConfigProblem(
                str(directory / f"{name}.yaml"),
                "source.proxy",
                f"only one channel can be the booking proxy (also {proxies[0]})",
            )
        )
    for name, channel in channels.items():
        file = str(directory / f"{name}.yaml")
        mllp = channel.source.mllp
        if mllp is not None and mllp.port:
            key = (mllp.host, mllp.port)
            if key in listeners:
                problems.append(
                    ConfigProblem(
                        file,
                        "source.mllp.port",
                        f"{mllp.host}:{mllp.port} is also used by {listeners[key]}",
                    )
                )
            listeners[key] = name
        for dest_name, dest in channel.destinations.items():
            if dest.channel is None:
                continue
            target = channels.get(dest.channel.channel)
            where = f"destinations.{dest_name}.channel.channel"
            if target is None:
                problems.append(
                    ConfigProblem(file, where, f"no channel named {dest.channel.channel!r}")
                )
            elif target.source.channel is None:
                problems.append(
                    ConfigProblem(
                        file, where, f"channel {target.name!r} does not have a 'channel' source"
                    )
                )
    return problems


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(path), "", exc.strerror or str(exc))]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(str(path), where, f"invalid YAML: {problem}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(str(path), "", "expected a mapping of keys at the top")])
    return data


def _validate(model: type[M], data: dict[str, Any], path: Path) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            ConfigProblem(str(path), _key_path(err["loc"]), _message(err)) for err in exc.errors()
        ) from exc


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not str(item).startswith("function-"):
            parts.append(("." if parts else "") + str(item).rstrip("_"))
    return "".join(parts)


def _message(err: Any) -> str:
    message = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return message


def _require_one(model: BaseModel, names: tuple[str, ...], what: str) -> None:
    present = [n for n in names if getattr(model, n) is not None]
    if len(present) != 1:
        found = f" (found {', '.join(present)})" if present else ""
        raise ValueError(f"a {what} needs exactly one of {', '.join(names)}{found}")
