"""GP extract file names: ``{ODS}_GPR4{HA}1.{M}{D}{S}``, e.g. ``A12345_GPR4LNA1.EAA``.

``M`` is the month (A..L), ``D`` the day (1..9, then A..V for 10..31), ``S`` the
split sequence. The extract's date must not be in the future nor more than 14
days before the processing date; in 1-15 January a December date is last year's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

PATTERN = re.compile(r"^[A-Z]\d{5}_GPR4[A-Z0-9]{3}1\.[A-L][1-9A-V][A-Z]$")
MAX_AGE = timedelta(days=14)
LONDON = ZoneInfo("Europe/London")
MONTHS = "ABCDEFGHIJKL"
DAYS = "123456789ABCDEFGHIJKLMNOPQRSTUV"
# Tests (and an operator replaying old files) set the processing date; default: the day
# the file was received, in England (GP systems date their extracts in local time).
PROCESSING_DATE_ENV = "TIE_DPS_PROCESSING_DATE"


class FilenameError(ValueError):
    """The name breaks a rule; the message says which."""


@dataclass(frozen=True)
class GpExtractName:
    filename: str
    practice: str
    health_authority: str
    extract_date: date
    sequence: str


def processing_date(received: datetime | None = None) -> date:
    """``TIE_DPS_PROCESSING_DATE`` (YYYY-MM-DD) when set, else the day ``received``, else
    today, in England: a file the post-office switch held for days is judged by when it
    came, and one sent just after midnight in summer (BST) is not from tomorrow."""
    configured = os.environ.get(PROCESSING_DATE_ENV)
    if configured:
        return date.fromisoformat(configured)
    return (received or datetime.now(UTC)).astimezone(LONDON).date()


def validate_filename(name: str, today: date | None = None) -> GpExtractName:
    """The parts of a valid name (upper-cased), or FilenameError naming the broken rule."""
    today = today or processing_date()
    # ASCII first: upper-casing turns some other letters into ASCII ones ("ß" into "SS").
    stripped = (name or "").strip()
    upper = stripped.upper() if stripped.isascii() else ""
    if not PATTERN.match(upper):
        raise FilenameError(
            f"file name {name!r} is not {{ODS}}_GPR4{{HA}}1.{{M}}{{D}}{{S}} "
            "(e.g. A12345_GPR4LNA1.EAA)"
        )
    practice, rest = upper.split("_", 1)
    month_code, day_code, sequence = rest[-3], rest[-2], rest[-1]
    month, day = MONTHS.index(month_code) + 1, DAYS.index(day_code) + 1
    year = today.year - 1 if (today.month == 1 and today.day <= 15 and month == 12) else today.year
    try:
        extract_date = date(year, month, day)
    except ValueError as exc:
        raise FilenameError(f"file name {name!r}: {day}/{month}/{year} is not a date") from exc
    if extract_date > today:
        raise FilenameError(f"file name {name!r}: date {extract_date} is in the future")
    if today - extract_date > MAX_AGE:
        raise FilenameError(
            f"file name {name!r}: date {extract_date} is more than 14 days before {today}"
        )
    return GpExtractName(upper, practice, rest[4:7], extract_date, sequence)
