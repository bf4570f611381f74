"""Durations and sizes as people write them in YAML: ``1s``, ``5m``, ``10MB``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``1s``, ``5m``, ``2h``, ``1d`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            hint = _combined(str(value)) or "use e.g. 250ms, 30s, 5m, 2h, 1d"
            raise ValueError(f"{value!r} is not a duration ({hint})")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _combined(text: str) -> str | None:
    """For ``1h30m``: one number and one unit, and the same length in the smallest unit."""
    parts = _PART.findall(text.replace(" ", ""))
    if len(parts) < 2 or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    unit = min((u for _, u in parts), key=lambda u: _DURATION_UNITS[u])
    total = sum(float(n) * _DURATION_UNITS[u] for n, u in parts) / _DURATION_UNITS[unit]
    return f"one number and one unit: write {total:g}{unit}"


def parse_size(value: object) -> int:
    """Bytes from ``10MB``, ``1MiB``, ``512kb`` or a bare number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 10MB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size (use e.g. 64KB, 10MB, 1MiB)")
        unit = (match.group(2) or "b").lower()
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise ValueError("a size must be positive")
    return size
