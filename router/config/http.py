"""Configuration models for HTTP: the FHIR source, the booking proxy source, the HTTP destination.

Kept apart from ``router.config`` (which uses them) to keep that module small.
Certificate paths are relative to the channel file, like a file destination's folder.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from router.config._base import DELIVERY_FIELDS, PositiveDuration, Size, _Strict

BARS_EVENT_SYSTEM = "https://fhir.nhs.uk/CodeSystem/message-events-bars"
BARS_EVENTS = (
    "servicerequest-request",
    "servicerequest-response",
    "booking-request",
    "booking-response",
)
# What a header template can name.
HEADER_FIELDS = (*DELIVERY_FIELDS, "attempt")
_RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class TlsOptions(_Strict):
    """``ca``: the CA bundle that signs the server; ``cert``/``key``: our client certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify: bool = True


class HttpTarget(_Strict):
    """POST or PUT each delivery to ``url`` (or the directory's base URL) + ``path``."""

    url: str | None = None
    path: str = ""
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    content_type: str | None = None
    timeout: PositiveDuration = 30.0
    connect_timeout: PositiveDuration = 10.0
    tls: TlsOptions = Field(default_factory=TlsOptions)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("headers")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            check_template(template)
        return value


def check_template(template: str) -> str:
    """A header template may name only ``HEADER_FIELDS``; ValueError lists them otherwise."""
    allowed = ", ".join("{" + f + "}" for f in HEADER_FIELDS)
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as exc:
        raise ValueError(f"bad template {template!r}: {exc}; placeholders are {allowed}") from exc
    unknown = [n for n in names if n not in HEADER_FIELDS]
    if unknown:
        raise ValueError(f"template {template!r} names {unknown[0]!r}; placeholders are {allowed}")
    if "\r" in template or "\n" in template:
        raise ValueError("a header template cannot contain a line break")
    return template


class BarsRouting(_Strict):
    """``$process-message`` forwarded synchronously to the target's endpoint (BaRS).

    ``connect_retries``: how often a connection that could not be made is tried again
    within the request (safe: nothing reached the receiver). Nothing is retried once the
    request may have been received.
    """

    timeout: PositiveDuration = 30.0
    connect_timeout: PositiveDuration = 5.0
    connect_retries: int = Field(default=1, ge=0, le=5)
    tls: TlsOptions = Field(default_factory=TlsOptions)


class SenderAuth(_Strict):
    """Who may send to an HTTP source (router/fhir/senders.py).

    ``auth: token`` (the default): a bearer token of an API user with the ``sender`` role,
    one of ``senders`` when they are named. ``auth: none``: anyone who reaches the port,
    which is then the network's to restrict (``run.py check`` warns off loopback).
    """

    auth: Literal["token", "none"] = "token"
    senders: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _senders_need_tokens(self) -> SenderAuth:
        if self.senders and self.auth == "none":
            raise ValueError("senders are named by their tokens: they need auth: token")
        if any(not name.strip() for name in self.senders):
            raise ValueError("a sender is a user's name, not empty")
        return self


class HttpSource(SenderAuth):
    """FHIR over HTTP at ``/fhir/<channel>/...``: ``$process-message`` and RESTful create."""

    max_body: Size = 10 * 1024 * 1024
    fhir: Literal["R4", "STU3"] = "R4"
    events: list[str] = Field(default_factory=lambda: list(BARS_EVENTS))
    event_system: str = BARS_EVENT_SYSTEM
    resources: list[str] = Field(default_factory=list)
    bars: BarsRouting | None = None

    @field_validator("resources")
    @classmethod
    def _resource_types(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _RESOURCE_TYPE.match(name):
                raise ValueError(f"{name!r} is not a FHIR resource type")
        return value


class ProxySource(SenderAuth):
    """The booking proxy at ``/proxy/<provider URL>`` (one channel at most)."""

    max_body: Size = 10 * 1024 * 1024
    timeout: PositiveDuration = 30.0
    connect_timeout: PositiveDuration = 5.0
    tls: TlsOptions = Field(default_factory=TlsOptions)


def resolve_tls(tls: TlsOptions, base: Path) -> None:
    """Make the certificate paths absolute against the channel file's folder."""
    for name in ("ca", "cert", "key"):
        value = getattr(tls, name)
        if value is not None:
            setattr(tls, name, (base / value).resolve())
