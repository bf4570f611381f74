"""Engine models: the store, HTTP, dispatch and processing options of one engine.yaml."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from router.config._base import Duration, PositiveDuration, Size, _Strict
from router.config.mesh import MeshOptions


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class SqliteOptions(_Strict):
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    busy_timeout: Duration = 5.0


class DispatchOptions(_Strict):
    lease: PositiveDuration = 30.0
    batch: int = Field(default=200, ge=1, le=10_000)  # ids bound one placeholder each
    poll_interval: PositiveDuration = 1.0
    lanes: int = Field(default=8, ge=1)


class RetentionOptions(_Strict):
    """When the pruner runs (channels say how long they keep messages: ``retention``)."""

    every: Duration = Field(default=3600.0, gt=0)
    batch: int = Field(default=500, ge=1, le=10_000)  # ids bound one placeholder each


class ProcessingOptions(_Strict):
    batch: int = Field(default=500, ge=1, le=10_000)  # ids bound one placeholder each


class FhirOptions(_Strict):
    # Processes that validate FHIR bodies beside the engine (0: in the engine's own threads,
    # where each validation holds up the event loop and the store's writer).
    validation_workers: int = Field(default=2, ge=0, le=16)


class DpsOptions(_Strict):
    """The DPS handoff (docs/dps-handoff.md)."""

    # A job sent to DPS and not answered for this long is overdue (router/dps/overdue.py).
    overdue_after: PositiveDuration = 24 * 3600.0


class BlobOptions(_Strict):
    """Where payloads above ``threshold`` are kept (default: ``blobs/`` beside a SQLite file)."""

    directory: Path | None = None
    threshold: Size = 1024 * 1024


class AuthOptions(_Strict):
    """Console sessions (router/auth/sessions.py) and their cookie."""

    session_idle: PositiveDuration = 30 * 60.0
    session_lifetime: PositiveDuration = 12 * 3600.0
    # How long before a session ends the console warns (at most half of session_idle).
    session_warning: PositiveDuration = 2 * 60.0
    # auto: Secure, except over plain HTTP to a loopback address (make run, tests).
    secure_cookie: Literal["auto", "always"] = "auto"


class LoggingOptions(_Strict):
    """How ``serve`` writes its log to stderr (router/log_format.py); ``-v`` makes it debug."""

    # text: one readable line an event. json: one JSON object a line, for a log shipper.
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


STORE_DRIVERS = ("sqlite", "postgresql+psycopg")


def safe_store_url(url: str) -> str:
    """``url`` with any password shown as ``***``: store URLs end up in errors and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^/@:]*):[^/@]*@", r"\1:***@", url)


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
    retention: RetentionOptions = Field(default_factory=RetentionOptions)
    blobs: BlobOptions = Field(default_factory=BlobOptions)
    fhir: FhirOptions = Field(default_factory=FhirOptions)
    mesh: MeshOptions = Field(default_factory=MeshOptions)
    dps: DpsOptions = Field(default_factory=DpsOptions)
    auth: AuthOptions = Field(default_factory=AuthOptions)
    logging: LoggingOptions = Field(default_factory=LoggingOptions)
    # open: channel files deploy on reload. governed: a changed file is a proposed revision,
    # deployed once someone other than its author approves it (docs/governance.md).
    governance: Literal["open", "governed"] = "open"
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("store")
    @classmethod
    def _store_url(cls, value: str) -> str:
        """Only the drivers tie ships; a SQLite file after three slashes (two make the
        path's first folder a host name)."""
        example = "e.g. sqlite:///data/tie.db or postgresql+psycopg://user@host/db"
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(f"{safe_store_url(value)} is not a database URL ({example})") from None
        if url.drivername not in STORE_DRIVERS:
            raise ValueError(
                f"{url.drivername!r} is not a supported store: use {' or '.join(STORE_DRIVERS)} "
                f"({example})"
            )
        if url.drivername == "sqlite" and (url.host or url.username or url.port):
            raise ValueError(
                f"{safe_store_url(value)} names a host: a SQLite file is sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
        return value


# --- loading ---------------------------------------------------------------
