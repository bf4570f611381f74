"""The message search options shared by ``messages``, ``reprocess`` and ``resend``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

from router.cli.output import positive_int
from router.store.inbound import utcnow
from router.store.queries import DELIVERY_STATUSES, MESSAGE_STATUSES, MessageFilter
from router.units import parse_duration


def add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search")
    group.add_argument("--channel")
    group.add_argument(
        "--status", type=message_status, choices=MESSAGE_STATUSES, help=", ".join(MESSAGE_STATUSES)
    )
    group.add_argument("--since", type=when, help="ISO time, or an age such as 2h")
    group.add_argument("--until", type=when, help="ISO time, or an age such as 30m")
    group.add_argument(
        "--type", dest="message_type", help="MSH-9 (ORU^R01 or ORU), or a FHIR event or type"
    )
    group.add_argument("--control-id", help="MSH-10, or a FHIR Bundle.id (resource id)")
    group.add_argument(
        "--key",
        help="a correlation key (order number, URN, X-Request-Id), control id or message UUID",
    )
    group.add_argument("--text", help="content contains this text (last 24h unless --since)")
    group.add_argument("--flag", help="flagged by processing, e.g. unmatched-order")
    group.add_argument(
        "--limit",
        type=positive_int,
        help="at most this many (listing: 50; reprocess/resend: all matches)",
    )
    group.add_argument(
        "--before", type=positive_int, dest="before_id", help="page cursor: ids below this"
    )


def search_filter(args: argparse.Namespace, *, default_limit: int = 50) -> MessageFilter:
    return MessageFilter(
        channel=args.channel,
        status=args.status,
        since=args.since,
        until=args.until,
        message_type=args.message_type,
        control_id=args.control_id,
        key=args.key,
        text=args.text,
        flag=args.flag,
        before_id=args.before_id,
        limit=args.limit or default_limit,
    )


def has_search(args: argparse.Namespace) -> bool:
    names = (
        "channel",
        "status",
        "since",
        "until",
        "message_type",
        "control_id",
        "key",
        "text",
        "flag",
    )
    return any(getattr(args, n) for n in names)


def message_status(value: str) -> str:
    """``value``, which ``choices`` then checks; a delivery status (``failed``, what support
    looks for at 3 a.m.) is refused naming the option that finds its messages."""
    if value in DELIVERY_STATUSES and value not in MESSAGE_STATUSES:
        statuses = ", ".join(f"'{s}'" for s in MESSAGE_STATUSES)
        raise argparse.ArgumentTypeError(
            f"'{value}' is a delivery status, not a message's ({statuses}): "
            f"run.py messages --delivery-status {value} finds the messages with one"
        )
    return value


def when(value: str) -> datetime:
    """``2h`` means two hours ago; otherwise an ISO 8601 time (UTC when no zone is given)."""
    try:
        return utcnow() - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    except OverflowError as exc:  # before the year 1
        raise argparse.ArgumentTypeError(f"{value!r} is too long ago") from exc
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is neither an ISO time nor an age") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
