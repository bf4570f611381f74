"""Shared helpers of the CLI: finding the configuration and printing records."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import ArgumentError, InterfaceError, NoSuchModuleError, OperationalError

from router.config import ConfigError, EngineConfig, load_engine, safe_store_url
from router.store.database import Store
from router.store.queries import MAX_ID

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "engine.yaml"


class CommandError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("TIE_CONFIG") or DEFAULT_CONFIG)


def engine_config(args: argparse.Namespace) -> EngineConfig:
    try:
        return load_engine(config_path(args))
    except ConfigError as exc:
        raise CommandError(str(exc), 2) from exc


# The store cannot be reached or its URL is wrong: the operator's to fix, not a bug to trace.
STORE_PROBLEMS = (OperationalError, InterfaceError, ArgumentError, NoSuchModuleError)


def store_problem(args: argparse.Namespace, exc: Exception) -> str:
    """One line: the store's URL (without its password), where that URL is set (so the
    operator edits the right place: TIE_STORE overrides the file) and the driver's first line."""
    try:
        url = safe_store_url(engine_config(args).store)
    except CommandError:
        url = "(engine.yaml unreadable)"
    source = "TIE_STORE" if os.environ.get("TIE_STORE") else f"store in {config_path(args)}"
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"store {url} ({source}): {reason[0] if reason else type(exc).__name__}"


def open_store(args: argparse.Namespace) -> Store:
    from router.store.migrate import upgrade
    from router.store.opening import open_store as _open

    store = _open(engine_config(args))
    upgrade(store)
    return store


def positive_int(value: str) -> int:
    """A count, message or delivery number: 1 or more (``--limit 0`` meant 50, ``-1`` all on
    SQLite and a traceback on PostgreSQL) and small enough for the store."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be 1 or more")
    if number > MAX_ID:  # beyond it a driver raises rather than finds none
        raise argparse.ArgumentTypeError(f"{value!r} is beyond any number in the store")
    return number


def message_ref(value: str) -> str:
    """A message number, UUID or URN; a number is checked as ``positive_int``."""
    number = value.removeprefix("urn:tie:message:")
    if number.isdigit():
        positive_int(number)
    return value


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be more than 0 seconds")
    return seconds


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON records")


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(type(value).__name__)


_CONTROL_CHARACTERS = (
    *range(0x20),  # C0, ESC among them
    *range(0x7F, 0xA0),  # DEL and C1
    0x2028,  # line and paragraph separators
    0x2029,
    *range(0x202A, 0x202F),  # bidirectional embeddings and overrides
    *range(0x2066, 0x206A),  # bidirectional isolates
)
_CONTROLS = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _CONTROL_CHARACTERS}
_CONTROLS_IN_LINES = {c: shown for c, shown in _CONTROLS.items() if c not in (0x09, 0x0A)}


def printable(text: str, lines: bool = False) -> str:
    """``text`` with control characters shown as ``\\xNN`` (tabs and newlines kept when
    ``lines``): message content is hostile input, and a raw ESC from a sender could clear
    the terminal, retitle it or hide rows, and a bidirectional override reorder them."""
    return text.translate(_CONTROLS_IN_LINES if lines else _CONTROLS)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(_summary(c, row.get(c))) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _summary(column: str, value: Any) -> Any:
    """An ``error`` that is a traceback as its last line (``ValueError: ward mapping
    broken``): its first line, all a cell has room for, is the same for every failure."""
    if column != "error" or not isinstance(value, str) or not value.startswith("Traceback"):
        return value
    return [line for line in value.splitlines() if line.strip()][-1].strip()


def _cell(value: Any) -> str:
    """A value as one cell; none (or an empty one) is ``-``, so the columns still split."""
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = printable(str(value).replace("\r", " ").replace("\n", " "))
    return text if len(text) <= 60 else text[:57] + "..."
