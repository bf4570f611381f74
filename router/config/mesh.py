"""Configuration models for MESH mailboxes, MESH sources and destinations, and SMTP.

Kept apart from ``router.config`` (which uses them) to keep that module small.
Secrets are never values in a YAML file: a ``Secret`` names an environment
variable or a file, read when the connector starts.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from router.config._base import PositiveDuration, Size, _Strict


class SecretUnavailable(Exception):
    """A secret's environment variable is unset or its file unreadable."""


class Secret(_Strict):
    """``{env: NAME}`` or ``{file: PATH}``: where a secret is, never the secret itself."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _not_literal(cls, value: object) -> object:
        if isinstance(value, str | bytes | int):
            raise ValueError(
                "secrets are never written in configuration: use {env: VARIABLE} or {file: PATH}"
            )
        return value

    @model_validator(mode="after")
    def _one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret needs exactly one of env, file")
        return self

    def value(self) -> str:
        if self.env is not None:
            found = os.environ.get(self.env)
            if found is None:
                raise SecretUnavailable(f"environment variable {self.env} is not set")
            return found
        assert self.file is not None
        try:
            return self.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretUnavailable(f"{self.file}: {exc.strerror or exc}") from exc


class MeshMailbox(_Strict):
    """One MESH mailbox this engine uses: where it is and how to authenticate."""

    url: str
    mailbox: str
    password: Secret
    shared_key: Secret
    cert: Path | None = Field(default=None, description="client certificate (PEM), mutual TLS")
    key: Path | None = Field(default=None, description="the client certificate's private key")
    ca: Path | None = Field(default=None, description="CA bundle that signs the MESH server")
    verify: bool = True
    max_chunk_size: Size = 20 * 1024 * 1024
    timeout: PositiveDuration = 600.0
    retries: int = Field(default=3, ge=0)

    @field_validator("mailbox")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()

    @model_validator(mode="after")
    def _pair(self) -> MeshMailbox:
        if self.key is not None and self.cert is None:
            raise ValueError("key needs cert")
        return self


class MeshOptions(_Strict):
    mailboxes: dict[str, MeshMailbox] = Field(default_factory=dict)


class MeshPoll(_Strict):
    """A channel fed by a MESH inbox; ``workflows`` picks its messages when channels share one."""

    mailbox: str
    interval: PositiveDuration = 60.0
    workflows: list[str] = Field(default_factory=list)
    handshake_every: PositiveDuration = 86400.0
    page_size: int = Field(default=500, ge=10, le=500)


def _check_template(value: str | None) -> str | None:
    """Templates are ``str.format`` strings; their field names are checked when they are sent."""
    if value is not None:
        try:
            list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"bad template {value!r}: {exc}") from exc
    return value


Template = Annotated[str, BeforeValidator(_check_template)]


class MeshTarget(_Strict):
    mailbox: str
    # The recipient mailbox; with a directory lookup it is the resolved mailbox instead.
    to: Template | None = None
    workflow_id: Template
    filename: Template | None = None
    subject: Template | None = None
    local_id: Template | None = "{idempotency_key}"
    compress: bool = False


class JobTarget(_Strict):
    """Records the DPS handoff job a delivery's JSON describes (router/dps/jobs.py)."""


class SmtpTarget(_Strict):
    host: str
    port: int = Field(default=25, ge=1, le=65535)
    starttls: bool = False
    ca: Path | None = None
    username: str | None = None
    password: Secret | None = None
    sender: str = Field(alias="from")
    to: list[Template]
    subject: Template
    body: Template = "{text}"
    attach: bool = False
    timeout: PositiveDuration = 30.0

    @model_validator(mode="after")
    def _login(self) -> SmtpTarget:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        return self
