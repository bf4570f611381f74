"""Filter, transform and route one message: the pure part of processing.

``process`` decides a message's outcome and the deliveries it makes without
touching the store, so the processor can write both in one transaction and
channel tests can run it with no network.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router import mappings
from router.conditions import Predicate, compile_conditions, describe
from router.config import ChannelConfig, DestinationConfig, DirectoryLookup
from router.hl7v2.er7 import Er7Error
from router.hl7v2.header import parse_header
from router.message import Message, Output
from router.payload import Payload

HEADER_BYTES = 64 * 1024  # enough of a payload to read its MSH segment
KEY_LENGTH = 255  # a delivery's ordering and idempotency keys in the store; longer ones are cut


class Unresolved(LookupError):
    """A destination's directory lookup found no endpoint for a recipient the message names."""


# Addresses of a message's recipients under a destination's directory lookup, given the
# destination's kind (e.g. ``http``); raises Unresolved. The engine's is the endpoint directory.
Resolver = Callable[[DirectoryLookup, Message, str], list[str]]


@dataclass(frozen=True)
class Route:
    name: str
    config: DestinationConfig
    when: Predicate
    transform: mappings.Mapping | None
    # A held destination's summary mapping: labels a message for its batch summary.
    summarise: mappings.Mapping | None = None


@dataclass(frozen=True)
class CompiledChannel:
    """A channel with its conditions compiled and its mappings loaded, once."""

    config: ChannelConfig
    filter: Predicate
    transform: mappings.Mapping | None
    routes: tuple[Route, ...]
    resolve: Resolver | None = None
    # The channel revision this was compiled from (channel_revisions.number), recorded on
    # every message it settles; None where none is known (channel tests, a bare compile).
    revision: int | None = None
    # The digest of the mapping code it loaded (router/governance/mapping_code.py).
    mappings_sha256: str | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def declarative(self) -> bool:
        """Whether processing runs no mapping, strict validation or directory lookup: only
        conditions and field reads, cheap and bounded enough to decide a message's outcome
        before its commit (router.processing.ReceiptProcessor)."""
        return (
            self.transform is None
            and self.config.validate_ != "strict"
            and all(
                r.transform is None and r.summarise is None and r.config.directory is None
                for r in self.routes
            )
        )


def compile_channel(config: ChannelConfig, resolve: Resolver | None = None) -> CompiledChannel:
    """Compile ``config``; its mappings folder must already be mounted.

    ``resolve`` serves destinations with a ``directory`` lookup.
    """
    routes = tuple(
        Route(
            name,
            dest,
            compile_conditions(dest.when),
            mappings.load(dest.transform, f"destinations.{name}.transform")
            if dest.transform
            else None,
            mappings.load(dest.hold.summary, f"destinations.{name}.hold.summary")
            if dest.hold is not None and dest.hold.summary
            else None,
        )
        for name, dest in config.destinations.items()
    )
    return CompiledChannel(
        config=config,
        filter=compile_conditions(config.filter),
        transform=mappings.load(config.transform) if config.transform else None,
        routes=routes,
        resolve=resolve,
    )


@dataclass(frozen=True)
class PlannedDelivery:
    destination: str
    payload: bytes | Payload
    content_type: str
    ordering_key: str = ""
    idempotency_key: str | None = None
    headers: dict[str, str] | None = None
    address: str | None = None
    # Why this delivery failed before it was sent (a recipient the directory does not know,
    # under ``unresolved: fail``): it is stored ``failed`` with this as its last error.
    failure: str | None = None
    held: bool = False  # the destination holds it for release approval
    labels: dict[str, str] | None = None  # the hold's summary mapping's labels
    # Applied to the store in the transaction that wrote it (a ``job`` record): stored ``sent``.
    applied: bool = False


@dataclass
class Outcome:
    """``processed`` with deliveries, ``filtered`` with a reason, or ``error`` with one."""

    status: str
    reason: str | None = None
    deliveries: list[PlannedDelivery] = field(default_factory=list)
    correlations: list[tuple[str, str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    revision: int | None = None  # the channel revision that decided it (CompiledChannel)


def process(channel: CompiledChannel, message: Message) -> Outcome:
    """Run ``message`` through ``channel``; a failing mapping is an ``error``, never a crash."""
    try:
        outcome = _process(channel, message)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a mapping's sys.exit() must not end the processor's thread
        outcome = Outcome(
            "error", traceback.format_exc(limit=20), correlations=message.correlations
        )
    outcome.flags = list(message.flags)
    outcome.revision = channel.revision
    return outcome


def _process(channel: CompiledChannel, message: Message) -> Outcome:
    config = channel.config
    if message.content_type == "hl7v2":
        try:
            control_id = message.control_id()
        except Er7Error as exc:
            return Outcome("error", f"unreadable HL7 v2: {exc}")
        message.correlate("control_id", control_id)
        if config.validate_ == "strict":
            from router.hl7v2.structure import validate_strict

            try:
                validate_strict(message.raw)
            except Exception as exc:
                return Outcome(
                    "error", f"strict validation failed: {exc}", correlations=message.correlations
                )
    for key, paths in config.correlate.items():
        for path in [paths] if isinstance(paths, str) else paths:
            for value in message.values(path):
                message.correlate(key, value)
    if not channel.filter(message):
        return Outcome(
            "filtered",
            f"filter not met: {describe(config.filter)}",
            correlations=message.correlations,
        )
    routes = [r for r in channel.routes if r.when(message)]
    if channel.routes and not routes:
        return Outcome(
            "filtered", "no destination's 'when' matched", correlations=message.correlations
        )
    try:
        addresses = {route.name: _addresses(channel, route, message) for route in routes}
    except Unresolved as exc:
        return Outcome("error", str(exc), correlations=message.correlations)
    # Without a transform the payload goes on as received; a blob is passed on, never loaded.
    passed_on = message.body if message.body.is_blob else message.raw
    produced = channel.transform(message) if channel.transform else passed_on
    if produced is None:
        return Outcome(
            "filtered",
            f"transform {config.transform} returned nothing",
            correlations=message.correlations,
        )
    _check_routes(produced, channel)
    deliveries: list[PlannedDelivery] = []
    for route in routes:
        outputs = _for_route(produced, route.name, message.content_type)
        if route.transform is not None:
            outputs = [
                o
                for out in outputs
                for o in _outputs(route.transform(message, out), out.content_type)
            ]
        key = _ordering_key(message, route.config)
        held = route.config.hold is not None
        labels = _labels(route, message) if held else None
        deliveries.extend(
            PlannedDelivery(
                route.name,
                out.payload,
                out.content_type,
                key,
                _idempotency_key(out, message),
                out.headers,
                address,
                failure,
                held=held,
                labels=labels,
            )
            for out in outputs
            for address, failure in addresses[route.name]
        )
    return Outcome("processed", None, deliveries, message.correlations)


def _addresses(
    channel: CompiledChannel, route: Route, message: Message
) -> list[tuple[str | None, str | None]]:
    """(address, failure) per recipient under a directory lookup; else the destination's own
    address (None). An unknown recipient under ``unresolved: fail`` is one failed delivery."""
    lookup = route.config.directory
    if lookup is None:
        return [(None, None)]
    if channel.resolve is None:
        raise Unresolved(f"destination {route.name} needs the endpoint directory")
    try:
        return [(address, None) for address in channel.resolve(lookup, message, route.config.kind)]
    except Unresolved as exc:
        if lookup.unresolved != "fail":
            raise
        return [(None, str(exc))]


def _labels(route: Route, message: Message) -> dict[str, str] | None:
    """The summary mapping's labels; a failing mapping labels the delivery with its error
    (the summary shows it) rather than losing the message."""
    if route.summarise is None:
        return None
    try:
        found = route.summarise(message) or {}
        return {str(k)[:64]: str(v)[:255] for k, v in dict(found).items()}
    except Exception as exc:
        return {"summary_error": f"{type(exc).__name__}: {exc}"[:255]}


def _for_route(produced: Any, route: str, content_type: str) -> list[Output]:
    if isinstance(produced, dict):
        return _outputs(produced.get(route), content_type)
    return _outputs(produced, content_type)


def _check_routes(produced: Any, channel: CompiledChannel) -> None:
    """A transform's dict must name real destinations: a typo would lose deliveries silently."""
    if isinstance(produced, dict):
        unknown = set(produced) - {r.name for r in channel.routes}
        if unknown:
            raise KeyError(
                f"transform returned payloads for unknown destination(s): {sorted(unknown)}"
            )


def _outputs(value: Any, content_type: str) -> list[Output]:
    """Normalise what a mapping returned: None, bytes, str, Output, or a list of them."""
    if value is None:
        return []
    if isinstance(value, bytes | str | Payload):
        return [Output(value, content_type)]
    if isinstance(value, Output):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        return [o for item in value for o in _outputs(item, content_type)]
    raise TypeError(
        f"a mapping returned {type(value).__name__}; expected bytes, str, Output or a list "
        "(a dict by destination name only as the channel transform's whole result)"
    )


def _ordering_key(message: Message, config: DestinationConfig) -> str:
    if not config.order_by:
        return ""
    return (message.get(config.order_by) or "")[:KEY_LENGTH]


def _idempotency_key(output: Output, message: Message) -> str | None:
    """The receiver's duplicate check key: the payload's MSH-10, else the message's identity;
    cut to ``KEY_LENGTH`` (a longer MSH-10 would fail every insert of its processing batch on
    PostgreSQL, and with it every message behind it)."""
    key = _identity(output, message)
    return key[:KEY_LENGTH] if key else None


def _identity(output: Output, message: Message) -> str | None:
    if output.content_type == "hl7v2":
        if message.header is not None and output.body is message.raw:
            return message.header.control_id or None  # passed on as received: its source read it
        body = output.body
        head = body.head(HEADER_BYTES) if isinstance(body, Payload) else output.data
        try:
            return parse_header(head).control_id
        except Er7Error:
            return None
    return message.uuid or None
