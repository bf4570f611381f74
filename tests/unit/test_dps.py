"""DPS handoff logic: GP extract file names, the JSON Lines results layout, CSVs and emails."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from mappings import dps_handoff
from router.config import load_channel, load_engine
from router.dps import jobs
from router.dps.filename import PROCESSING_DATE_ENV, FilenameError, validate_filename
from router.dps.results import (
    ResultsError,
    csv_files,
    read_results,
    summary_body,
    summary_subject,
)
from router.message import Message
from router.store.schema import JOB_FINAL


def test_a_valid_name_is_upper_cased_and_split():
    name = validate_filename("k82070_gpr4lna1.iaa", date(2021, 9, 19))
    assert (name.filename, name.practice, name.health_authority) == (
        "K82070_GPR4LNA1.IAA",
        "K82070",
        "LNA",
    )
    assert (name.extract_date, name.sequence) == (date(2021, 9, 10), "A")


@pytest.mark.parametrize(
    ("name", "today", "reason"),
    [
        ("K82070_GPR4LNA1.IAA.txt", date(2021, 9, 19), "is not {ODS}_GPR4{HA}1"),
        ("K8207_GPR4LNA1.IAA", date(2021, 9, 19), "is not {ODS}_GPR4{HA}1"),
        ("K82070_GPR4LNA2.IAA", date(2021, 9, 19), "is not {ODS}_GPR4{HA}1"),
        ("K82070_GPR4LNA1.MAA", date(2021, 9, 19), "is not {ODS}_GPR4{HA}1"),  # month M
        ("K82070_GPR4LNA1.IWA", date(2021, 9, 19), "is not {ODS}_GPR4{HA}1"),  # day W
        ("K82070_GPR4LNA1.BUA", date(2021, 3, 1), "30/2/2021 is not a date"),
        ("K82070_GPR4LNA1.IAA", date(2021, 9, 9), "is in the future"),
        ("K82070_GPR4LNA1.IAA", date(2021, 9, 25), "more than 14 days before"),
    ],
)
def test_every_rule_names_what_is_wrong(name, today, reason):
    with pytest.raises(FilenameError, match=reason.replace("{", r"\{").replace("}", r"\}")):
        validate_filename(name, today)


@pytest.mark.parametrize(
    "name",
    [
        "A82023_GPR4LNA1.C\u00df",
        "A82023_GPR4LNA1.C\u017fA",
        "A\u0668\u0662\u0660\u0662\u0663_GPR4LNA1.CSA",
    ],
    ids=["sharp-s-upper-cases-to-SS", "long-s-upper-cases-to-S", "arabic-indic-digits"],
)
def test_a_name_with_letters_or_digits_outside_ascii_is_refused(name):
    """The rule is ASCII: upper-casing must not turn another letter into one, nor ``\\d``
    take another script's digits (the practice goes into MESH headers and file names)."""
    with pytest.raises(FilenameError, match=r"is not \{ODS\}"):
        validate_filename(name, date(2020, 4, 10))


def test_fourteen_days_old_is_still_valid():
    assert validate_filename("K82070_GPR4LNA1.IAA", date(2021, 9, 24)).extract_date == date(
        2021, 9, 10
    )


def test_a_december_file_in_early_january_is_last_years():
    assert validate_filename("A12345_GPR4LNA1.LVA", date(2021, 1, 10)).extract_date == date(
        2020, 12, 31
    )
    with pytest.raises(FilenameError, match="is in the future"):
        validate_filename("A12345_GPR4LNA1.LVA", date(2021, 1, 16))


def _jsonl(*lines):
    return io.BytesIO("".join(json.dumps(line) + "\n" for line in lines).encode())


HEADER = {"type": "header", "version": 1, "job_id": "j1", "practice": "A82023", "filename": "f"}
SUMMARY = {"type": "summary", "patients": 1}


def test_results_give_statistics_csvs_and_the_summary():
    results = read_results(
        _jsonl(
            HEADER,
            {"type": "only_on_gp", "record": {"SURNAME": "SMITH", "NHS NO.": "1"}},
            {"type": "difference", "record": {"nhsNumber": "2", "ruleId": "R1"}},
            {"type": "difference", "record": {"nhsNumber": "2", "ruleId": "R2"}},
            {"type": "difference", "record": {"nhsNumber": "3", "ruleId": "R1"}},
            {"type": "summary", "patients": 10},
        )
    )
    assert results.statistics == {
        "patients": 10,
        "only_on_gp": 1,
        "only_on_pds": 0,
        "differences": 3,
        "patients_with_differences": 2,
        "differences_by_rule": {"R1": 2, "R2": 1},
    }
    at = datetime(2021, 7, 1, 14, 5, 6, tzinfo=UTC)  # 15:05:06 in London (BST)
    files = dict(csv_files(results, at))
    assert sorted(files) == [
        "A82023-CDD-20210701150506-j1.csv",
        "A82023-OnlyOnGP-20210701150506-j1.csv",
        "A82023-OnlyOnPDS-20210701150506-j1.csv",
    ]
    assert files["A82023-OnlyOnPDS-20210701150506-j1.csv"].count(b"\n") == 1, "header only"
    assert files["A82023-OnlyOnGP-20210701150506-j1.csv"].splitlines()[1] == (
        b"SMITH,,,1,,,,,,,,,,"
    )
    assert summary_subject("A82023", "f", at) == (
        "PDS Comparison run at 15:05:06 on 01/07/2021 against Practice: A82023 - f - "
        "Registrations Output"
    )
    assert "3 discrepancies" in summary_body(results, at, list(files))


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([], "line 1: expected the header line"),
        ([{**HEADER, "version": 2}, SUMMARY], "layout version 2 is not 1"),
        ([HEADER, {"type": "gossip"}], "line 2: unknown type 'gossip'"),
        ([HEADER, {"type": "only_on_gp"}], "line 2: a only_on_gp line needs a record"),
        ([{k: v for k, v in HEADER.items() if k != "job_id"}], "the header has no job_id"),
        ([{**HEADER, "practice": "../A82023"}], "the header's practice '../A82023' is not"),
        ([{**HEADER, "filename": "x" * 256}], "the header's filename 'x+' is not 1 to 255"),
        ([{**HEADER, "job_id": "j" * 37}], "the header's job_id 'j+' is not 1 to 36"),
        (
            [HEADER, {"type": "only_on_gp", "record": {"SURNAME": "SMITH"}}],
            "the results end without the summary line",
        ),
        ([HEADER, SUMMARY, {"type": "only_on_gp", "record": {}}], "line 3: a 'only_on_gp' line"),
        ([HEADER, {"type": "summary", "patients": "12a"}], "line 2: patients '12a' is not a count"),
        ([HEADER, {"type": "summary"}], "line 2: patients None is not a count"),
        ([HEADER, {"type": "summary", "patients": -1}], "line 2: patients -1 is not a count"),
        ([HEADER, {"type": "validation_failure", "errors": "bad"}], "line 2: a validation_failure"),
    ],
)
def test_results_that_break_the_layout_say_where(lines, reason):
    with pytest.raises(ResultsError, match=reason):
        read_results(_jsonl(*lines))


def test_a_line_that_is_not_json_is_named():
    with pytest.raises(ResultsError, match="line 2: not JSON"):
        read_results(io.BytesIO(json.dumps(HEADER).encode() + b"\n{oops\n"))


def test_a_value_a_spreadsheet_would_run_as_a_formula_stays_text():
    record = {
        "SURNAME": '=HYPERLINK("http://x.example","click")',
        "FORENAMES": "+1",
        "ADD 1": "-2+3",
        "ADD 2": "@SUM(A1)",
        "ADD 3": "\tTAB",
        "ADD 4": "FLAT 1-2",
    }
    results = read_results(_jsonl(HEADER, {"type": "only_on_gp", "record": record}, SUMMARY))
    files = dict(csv_files(results, datetime(2021, 7, 1, tzinfo=UTC)))
    (row,) = list(
        csv.DictReader(io.StringIO(files["A82023-OnlyOnGP-20210701010000-j1.csv"].decode()))
    )
    assert row["SURNAME"] == '\'=HYPERLINK("http://x.example","click")'
    assert [row[c] for c in ("FORENAMES", "ADD 1", "ADD 2", "ADD 3")] == [
        "'+1",
        "'-2+3",
        "'@SUM(A1)",
        "'\tTAB",
    ]
    assert row["ADD 4"] == "FLAT 1-2", "only a leading character counts"


def test_a_line_that_is_not_utf8_is_named():
    with pytest.raises(ResultsError, match="line 2: not UTF-8"):
        read_results(io.BytesIO(json.dumps(HEADER).encode() + b'\n{"type": "\xff"}\n'))


def test_a_validation_failure_needs_no_summary():
    failure = {"type": "validation_failure", "errors": [{"line": 2, "message": "no NHS number"}]}
    results = read_results(_jsonl(HEADER, failure))
    assert results.failed and results.failures == failure["errors"]


def test_results_are_kept_as_their_csv_lines_not_as_parsed_records():
    record = {"nhsNumber": "9449304424", "gp_name_family": "AINDOW", "ruleId": "MN-BR-DB-01"}
    lines = [HEADER, *({"type": "difference", "record": record} for _ in range(20_000)), SUMMARY]
    stream = _jsonl(*lines)
    tracemalloc.start()
    try:
        files = csv_files(read_results(stream), datetime(2021, 7, 1, tzinfo=UTC))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    written = sum(len(data) for _, data in files)
    assert peak < 3 * written, f"peak {peak} bytes for {written} bytes of CSV"


def test_retention_counts_as_finished_exactly_the_jobs_only_a_failed_output_moves() -> None:
    """Retention keeps a job's intake message until the job is final (JOB_FINAL); the state
    machine (TRANSITIONS) says which statuses are: those no transition leaves but the one
    to ``failed_outputs`` (a CSV file or the summary email that fails for good). The lists
    must not drift apart."""
    statuses = {*jobs.STARTS, *jobs.RESULTS, *jobs.TRANSITIONS}
    statuses |= {to for targets in jobs.TRANSITIONS.values() for to in targets}
    finished = {s for s in statuses if set(jobs.TRANSITIONS.get(s, ())) <= {"failed_outputs"}}
    assert set(JOB_FINAL) == set(jobs.FINAL) == finished
    assert "failed_outputs" not in JOB_FINAL, "retention keeps a job with an output to resend"


def _received(filename: str, at: datetime) -> Message:
    return Message(
        b"503\\*\r\n", "gp-extract-intake", received_at=at, source={"filename": filename}
    )


def test_a_file_is_judged_by_the_day_it_was_received_however_late_it_is_processed(
    monkeypatch,
):
    """The post-office switch may hold a file for days: its date is checked against the day
    it arrived, not the day the intake was switched back on."""
    monkeypatch.delenv(PROCESSING_DATE_ENV, raising=False)
    on_time = _received("A82023_GPR4LNA1.CSA", datetime(2020, 4, 10, 9, tzinfo=UTC))
    outputs = dps_handoff.intake(on_time)
    assert json.loads(outputs["job"].data)["status"] == "sent_to_dps"
    assert "dps" in outputs


def test_the_processing_date_setting_still_overrides_the_day_received(monkeypatch):
    monkeypatch.setenv(PROCESSING_DATE_ENV, "2020-04-20")
    late = _received("A82023_GPR4LNA1.CSA", datetime(2020, 4, 10, 9, tzinfo=UTC))
    record = json.loads(dps_handoff.intake(late)["job"].data)
    assert record["status"] == "failed_validation"
    assert "more than 14 days before 2020-04-20" in record["error"]


def test_the_day_received_is_the_day_in_england(monkeypatch):
    """A file dated 10 April and sent 20 minutes into that day in England (BST) arrives
    at 23:20 UTC on the 9th: it is not from the future."""
    monkeypatch.delenv(PROCESSING_DATE_ENV, raising=False)
    just_after_midnight = datetime(2020, 4, 9, 23, 20, tzinfo=UTC)
    outputs = dps_handoff.intake(_received("A82023_GPR4LNA1.DAA", just_after_midnight))
    assert json.loads(outputs["job"].data)["status"] == "sent_to_dps"


def test_the_example_engine_configuration_loads_with_its_channels():
    """docs/dps-handoff.md runs the example as it is: `run.py --config
    examples/dps-handoff/engine.yaml serve`."""
    folder = Path(__file__).resolve().parents[2] / "examples" / "dps-handoff"
    config = load_engine(folder / "engine.yaml")
    assert config.store == f"sqlite:///{(folder / '../../data/dps-handoff.db').resolve()}"
    names = {load_channel(p).name for p in sorted((folder / "channels").glob("*.yaml"))}
    assert names == {"gp-extract-intake", "dps-results"}
    # A local mesh-sandbox serves plain HTTP (docs/mesh.md), as config/engine.yaml has it:
    # https:// to it fails its TLS handshake.
    bundled = load_engine(folder.parents[1] / "config" / "engine.yaml")
    assert config.mesh.mailboxes["hub"].url == bundled.mesh.mailboxes["trust"].url
    assert config.mesh.mailboxes["hub"].url == "http://127.0.0.1:8700"
