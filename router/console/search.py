"""The message browser's search: the CLI's filters read from a query string, bounded.

The delivery status (``failed``...) puts the messages whose delivery failed one click
away from the dashboard.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection

from router.cli.filters import when
from router.store.queries import (
    DELIVERY_STATUSES,
    LISTING,
    MESSAGE_STATUSES,
    MessageFilter,
    parse_id,
    search_query,
    with_delivery_counts,
)

PAGE = 50
MAX_PAGE = 200
MAX_VALUE = 255
# What a Since or Until that cannot be read should have been (router.cli.filters.when).
TIME_HINT = "give an ISO time (2026-05-01T09:00 is UTC) or an age (2h)"
FIELDS = ("channel", "status", "delivery", "since", "until", "type", "control_id", "key", "text")


@dataclass
class Search:
    """What the form asked for (``values``, echoed back) and what it means (``filter``)."""

    values: dict[str, str]
    filter: MessageFilter
    problems: list[str] = field(default_factory=list)

    def query_string(self, **extra: Any) -> str:
        chosen = {k: v for k, v in self.values.items() if v}
        chosen.update({k: v for k, v in extra.items() if v is not None})
        return urlencode(chosen)

    @property
    def given(self) -> bool:
        return any(self.values.get(name) for name in FIELDS)


def read_search(params: Any, *, limit: int = PAGE, content: bool = True) -> Search:
    """A Search from request parameters; a value that cannot be read is named in ``problems``.
    Without ``content`` (a user who may not see message content) ``text`` is ignored."""
    values = {name: str(params.get(name) or "").strip()[:MAX_VALUE] for name in FIELDS}
    if not content:
        values["text"] = ""
    problems: list[str] = []
    moments = {}
    for name in ("since", "until"):
        moments[name] = None
        if values[name]:
            try:
                moments[name] = when(values[name])
            except argparse.ArgumentTypeError:
                problems.append(f"{name}: {TIME_HINT}")
    for name, allowed in (("status", MESSAGE_STATUSES), ("delivery", DELIVERY_STATUSES)):
        if values[name] and values[name] not in allowed:
            problems.append(f"{name}: one of {', '.join(allowed)}")
            values[name] = ""
    before = str(params.get("before") or "")
    f = MessageFilter(
        channel=values["channel"] or None,
        status=values["status"] or None,
        since=moments["since"],
        until=moments["until"],
        message_type=values["type"] or None,
        control_id=values["control_id"] or None,
        key=values["key"] or None,
        text=values["text"] or None,
        delivery_status=values["delivery"] or None,
        before_id=parse_id(before),
        limit=limit,
    )
    return Search(values, f, problems)


def find(conn: Connection, search: Search, columns: tuple[Any, ...] = LISTING) -> list[Any]:
    return list(conn.execute(search_query(search.filter, conn.dialect.name, columns)))


def page(conn: Connection, search: Search) -> list[dict[str, Any]]:
    """One page of messages, newest first, each with its deliveries counted by status."""
    return with_delivery_counts(conn, [dict(r._mapping) for r in find(conn, search)])
