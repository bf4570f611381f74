"""DPS results: JSON Lines in (layout version 1, docs/dps-handoff.md), CSVs and emails out.

One JSON object a line, read as a stream. The first line is the header::

    {"type": "header", "version": 1, "job_id": "...", "practice": "A82023",
     "filename": "A82023_GPR4LNA1.CSA"}

then any number of ``only_on_gp``, ``only_on_pds`` and ``difference`` lines, each
with a ``record`` whose keys are the columns of its CSV, and a last line
``{"type": "summary", "patients": N}``. A file DPS could not process has,
instead of records, ``{"type": "validation_failure", "errors": [...]}``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

LAYOUT_VERSION = 1
ONLY_ON_GP_COLUMNS = [
    "SURNAME",
    "FORENAMES",
    "DOB",
    "NHS NO.",
    "ADD 1",
    "ADD 2",
    "ADD 3",
    "ADD 4",
    "ADD 5",
    "POSTCODE",
    "TITLE",
    "SEX",
    "STATUS",
    "STATUS DATE",
]
ONLY_ON_PDS_COLUMNS = [
    "SURNAME",
    "FORENAMES",
    "DOB",
    "NHS NO.",
    "ADD 1",
    "ADD 2",
    "ADD 3",
    "ADD 4",
    "ADD 5",
    "POSTCODE",
    "TITLE",
    "SEX",
    "DATE ACCEPT.",
]
CDD_COLUMNS = [
    "nhsNumber",
    "gp_birthDate",
    "gp_gender",
    "gp_name_given",
    "gp_name_family",
    "gp_name_previousFamily",
    "gp_name_prefix",
    "gp_address_line1",
    "gp_address_line2",
    "gp_address_line3",
    "gp_address_line4",
    "gp_address_line5",
    "gp_postalCode",
    "gp_generalPractitionerOds",
    "pds_scn",
    "pds_security",
    "pds_birthDate",
    "pds_gender",
    "pds_name_given",
    "pds_name_family",
    "pds_name_prefix",
    "pds_address",
    "pds_postalCode",
    "pds_generalPractitionerOds",
    "ruleId",
    "guidance",
]
KINDS = {
    "only_on_gp": ("OnlyOnGP", ONLY_ON_GP_COLUMNS),
    "only_on_pds": ("OnlyOnPDS", ONLY_ON_PDS_COLUMNS),
    "difference": ("CDD", CDD_COLUMNS),
}
LONDON = ZoneInfo("Europe/London")
# What makes a spreadsheet read a cell as a formula (OWASP CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The header names the files sent on and the job row: each value is checked, since the
# practice becomes part of three MESH file names and the values fill bounded columns.
HEADER_RULES = {
    "job_id": (re.compile(r"^[A-Za-z0-9-]{1,36}$"), "1 to 36 letters, digits and '-'"),
    "practice": (re.compile(r"^[A-Z0-9]{1,16}$"), "1 to 16 capital letters and digits"),
    "filename": (
        re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$"),
        "1 to 255 letters, digits, '.', '_' and '-' (no path)",
    ),
}


class ResultsError(ValueError):
    """The JSON Lines break the layout: say where. ``results`` holds the header when it was
    read, so the job it names can be told."""

    results: Results | None = None


class Table:
    """One CSV file, written as its records are read: a record is kept only as its line
    (a parsed record costs many times its text), and counted."""

    def __init__(self, columns: list[str]) -> None:
        self._columns = columns
        self._out = io.BytesIO()
        self._text = io.TextIOWrapper(self._out, encoding="utf-8", newline="")
        self._writer = csv.DictWriter(
            self._text, fieldnames=columns, extrasaction="ignore", lineterminator="\n"
        )
        self._writer.writeheader()
        self.rows = 0

    def add(self, record: dict[str, Any]) -> None:
        self._writer.writerow({c: _cell(record.get(c)) for c in self._columns})
        self.rows += 1

    def data(self) -> bytes:
        self._text.flush()
        return self._out.getvalue()


@dataclass
class Results:
    job_id: str
    practice: str
    filename: str
    patients: int = 0
    tables: dict[str, Table] = field(
        default_factory=lambda: {kind: Table(columns) for kind, (_, columns) in KINDS.items()}
    )
    by_rule: Counter[str] = field(default_factory=Counter)
    patients_with_differences: set[Any] = field(default_factory=set)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False

    def add(self, kind: str, record: dict[str, Any]) -> None:
        self.tables[kind].add(record)
        if kind == "difference":
            self.by_rule[str(record.get("ruleId", ""))] += 1
            self.patients_with_differences.add(record.get("nhsNumber"))

    @property
    def statistics(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "only_on_gp": self.tables["only_on_gp"].rows,
            "only_on_pds": self.tables["only_on_pds"].rows,
            "differences": self.tables["difference"].rows,
            "patients_with_differences": len(self.patients_with_differences),
            "differences_by_rule": dict(sorted(self.by_rule.items())),
        }


def read_results(stream: BinaryIO) -> Results:
    """Parse the JSON Lines of one job, line by line."""
    lines = _objects(stream)
    first = next(lines, None)
    if first is None or first[1].get("type") != "header":
        raise ResultsError("line 1: expected the header line")
    _, header = first
    if header.get("version") != LAYOUT_VERSION:
        raise ResultsError(f"line 1: layout version {header.get('version')!r} is not 1")
    values = []
    for name, (rule, meaning) in HEADER_RULES.items():
        if name not in header:
            raise ResultsError(f"line 1: the header has no {name}")
        value = str(header[name])
        if not rule.match(value):
            raise ResultsError(f"line 1: the header's {name} {value[:80]!r} is not {meaning}")
        values.append(value)
    results = Results(*values)
    try:
        _read_lines(lines, results)
    except ResultsError as exc:
        exc.results = results
        raise
    return results


def _read_lines(lines: Iterator[tuple[int, dict[str, Any]]], results: Results) -> None:
    """The lines after the header, into ``results``."""
    summary = None
    for number, line in lines:
        kind = line.get("type")
        if summary is not None:
            raise ResultsError(f"line {number}: a {kind!r} line after the summary (line {summary})")
        if kind in KINDS:
            if not isinstance(line.get("record"), dict):
                raise ResultsError(f"line {number}: a {kind} line needs a record object")
            results.add(kind, line["record"])
        elif kind == "summary":
            patients = line.get("patients")
            if type(patients) is not int or patients < 0:
                raise ResultsError(f"line {number}: patients {patients!r} is not a count")
            results.patients, summary = patients, number
        elif kind == "validation_failure":
            if not isinstance(line.get("errors"), list):
                raise ResultsError(f"line {number}: a validation_failure line needs an errors list")
            results.failed = True
            results.failures.extend(line["errors"])
        else:
            raise ResultsError(f"line {number}: unknown type {kind!r}")
    # Without its summary the file was cut short: its CSVs would be silently incomplete.
    if summary is None and not results.failed:
        raise ResultsError("the results end without the summary line (cut short?)")


def _objects(stream: BinaryIO) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ResultsError(f"line {number}: not JSON: {exc.msg}") from exc
        except UnicodeDecodeError as exc:
            raise ResultsError(f"line {number}: not UTF-8: {exc.reason}") from exc
        if not isinstance(value, dict):
            raise ResultsError(f"line {number}: expected a JSON object")
        yield number, value


def csv_files(results: Results, at: datetime) -> list[tuple[str, bytes]]:
    """``{Practice}-OnlyOnGP-YYYYMMDDHHMMSS-{job id}.csv``, ``...-OnlyOnPDS-...`` and
    ``...-CDD-...``. The time is to the second and a practice may have several GP files
    answered in one second (split files): the job id makes each name PCSE gets its own."""
    stamp = at.astimezone(LONDON).strftime("%Y%m%d%H%M%S")
    return [
        (f"{results.practice}-{label}-{stamp}-{results.job_id}.csv", results.tables[kind].data())
        for kind, (label, _) in KINDS.items()
    ]


def _cell(value: Any) -> str:
    """The value as text; one a spreadsheet would run as a formula gets a leading ``'``.

    PCSE open these files in a spreadsheet, and a record's values come from GP and PDS
    data (OWASP "CSV injection"): ``=HYPERLINK(...)`` in an address must stay text.
    """
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def timestamp(at: datetime) -> str:
    return at.astimezone(LONDON).strftime("%H:%M:%S on %d/%m/%Y")


def summary_subject(practice: str, filename: str, at: datetime) -> str:
    """The published subject of the List Reconciliation summary email."""
    return (
        f"PDS Comparison run at {timestamp(at)} against Practice: {practice} - {filename} - "
        "Registrations Output"
    )


def summary_body(results: Results, at: datetime, files: list[str]) -> str:
    s = results.statistics
    rules = "".join(f"\n    - {rule}: {n}" for rule, n in s["differences_by_rule"].items())
    listing = "".join(f"\n    - {name}" for name in files)
    return (
        f"The GP file: {results.filename} has been compared to PDS at {timestamp(at)}\n\n"
        f"{s['patients']} patient records were in the GP file.\n\n"
        f"{s['only_on_pds']} patient records were found on PDS, that were not in the GP file.\n\n"
        f"{s['only_on_gp']} patient records were found in the GP file, that are not associated "
        "to this GP in PDS.\n\n"
        f"The comparison run has also discovered {s['differences']} discrepancies that have "
        f"generated {s['differences']} work item(s) to resolve, for "
        f"{s['patients_with_differences']} patient(s).{rules}\n\n"
        f"The files sent to PCSE:{listing}\n"
    )


def failure_subject(filename: str) -> str:
    return f"List Reconciliation: GP file {filename} failed validation"


def unreadable_subject(filename: str | None, job_id: str) -> str:
    """Names the GP file, or, when the results' header could not be read, the job."""
    what = f"GP file {filename}" if filename else f"job {job_id}"
    return f"List Reconciliation: DPS results for {what} could not be read"


def unreadable_body(filename: str | None, job_id: str, at: datetime, reason: str) -> str:
    what = f"the GP file: {filename}" if filename else f"job {job_id} (run.py jobs names its file)"
    return (
        f"DPS's results for {what}, received at {timestamp(at)}, could not "
        f"be read, so nothing has been sent to PCSE.\n\nReason: {reason}\n\n"
        "Ask DPS to send the results again.\n"
    )


def is_job_id(value: str) -> bool:
    """Whether ``value`` is a job id as the header's ``job_id`` must be."""
    return bool(HEADER_RULES["job_id"][0].match(value))


def failure_body(filename: str, at: datetime, reasons: Iterable[str]) -> str:
    lines = "".join(f"\n    - {reason}" for reason in reasons)
    return (
        f"The GP file: {filename} received at {timestamp(at)} failed validation and has "
        f"not been compared to PDS.\n\nReasons:{lines}\n\n"
        "Please correct the file and send it again.\n"
    )
