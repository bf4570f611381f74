"""The engine's log format: readable lines, or one JSON object a line for a log shipper.

``logging: {format: json}`` in engine.yaml makes every line a JSON object with a UTC
timestamp, so a SIEM or Loki takes it without a parsing rule; lines about a delivery
carry ``channel``, ``destination``, ``delivery_id`` and ``message_id`` as fields of their
own (passed with ``extra=``), to find the message with ``run.py show <message_id>``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from router.config.engine import LoggingOptions

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a log call may add with ``extra=``, copied into the JSON object when present.
FIELDS = ("channel", "destination", "delivery_id", "message_id")


class JsonFormatter(logging.Formatter):
    """One JSON object a record: time, level, logger, message, the known fields, and the
    traceback as ``exception`` (one line: newlines are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if (value := record.__dict__.get(name)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(options: LoggingOptions, *, verbose: bool = False) -> None:
    """Apply engine.yaml's ``logging`` to the root logger's stderr handler (one is added if
    there is none; other handlers are left alone) and its level (``-v``, debug, wins)."""
    root = logging.getLogger()
    formatter = JsonFormatter() if options.format == "json" else logging.Formatter(TEXT)
    stderr = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__)
    ]
    if not stderr:
        stderr = [logging.StreamHandler(sys.stderr)]
        root.addHandler(stderr[0])
    for handler in stderr:
        handler.setFormatter(formatter)
    root.setLevel(logging.DEBUG if verbose else options.level.upper())
