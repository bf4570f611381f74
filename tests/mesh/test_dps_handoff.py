"""The DPS handoff (List Reconciliation) end to end against mesh-sandbox and a real SMTP relay.

A GP system sends an extract to the hub's MESH mailbox; the engine validates its
name, records a job and forwards the file to DPS; a small fake DPS answers with
JSON Lines; the engine sends PCSE the three CSV files and emails the summary.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mesh_testing import DPS, HUB, LAB, PCSE, MeshSandbox, SmtpRelay, mailbox_config, mesh_env
from sqlalchemy import select, update
from tie_testing import RunningEngine, engine_config, wait_until

from router.channel_control import set_paused
from router.config import load_channel
from router.config.channel import RetentionPolicy
from router.dps.closing import close_job
from router.dps.filename import PROCESSING_DATE_ENV
from router.dps.jobs import list_jobs
from router.replay import resend
from router.retention import Pruner
from router.store.schema import audit_events, correlations, deliveries, messages

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dps-handoff" / "channels"
SAMPLES = ROOT / "tests" / "data" / "listrec"  # the public samples (SOURCES.txt)
GP_FILE = "A82023_GPR4LNA1.CSA"  # dated 28 March: valid when processed up to 11 April 2020
GP = LAB  # the GP system's mailbox


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _header(name: str) -> list[str]:
    return _sample(name).decode().splitlines()[0].split(",")


@pytest.fixture
def relay():
    server = SmtpRelay()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _environment(monkeypatch):
    mesh_env(monkeypatch)
    monkeypatch.setenv(PROCESSING_DATE_ENV, "2020-04-10")


def _channels(relay: SmtpRelay, dps_mailbox: str | None = None, **results: str):
    channels = {}
    for name in ("gp-extract-intake", "dps-results"):
        config = load_channel(EXAMPLE / f"{name}.yaml")
        config.source.mesh.interval = 0.2
        for destination in config.destinations.values():
            if destination.smtp is not None:
                destination.smtp.host, destination.smtp.port = "127.0.0.1", relay.port
        channels[name] = config
    if dps_mailbox:
        channels["gp-extract-intake"].destinations["dps"].mesh.to = dps_mailbox
    outputs = channels["dps-results"].destinations
    if "pcse_mailbox" in results:
        outputs["pcse"].mesh.to = results["pcse_mailbox"]
    if "summary_to" in results:
        outputs["summary-email"].smtp.to = [results["summary_to"]]
    if "failure_to" in results:
        for channel in channels.values():
            channel.destinations["failure-email"].smtp.to = [results["failure_to"]]
    return channels


def _engine(
    tmp_path,
    store_url,
    sandbox: MeshSandbox,
    relay: SmtpRelay,
    dps_mailbox: str | None = None,
    chunk: str | None = None,
    **results: str,
) -> RunningEngine:
    mailbox = mailbox_config(sandbox, **({"max_chunk_size": chunk} if chunk else {}))
    config = engine_config(
        tmp_path,
        store_url,
        mappings=str(ROOT / "mappings"),
        blobs={"directory": str(tmp_path / "blobs")},
        mesh={"mailboxes": {"hub": mailbox}},
    )
    return RunningEngine(config, _channels(relay, dps_mailbox, **results))


def _send_extract(sandbox: MeshSandbox, filename: str = GP_FILE, data: bytes | None = None) -> str:
    with sandbox.client(GP) as gp:
        return gp.send_message(
            HUB, data or _sample(GP_FILE), workflow_id="LISTREC_GP_EXTRACT", filename=filename
        )


def fake_dps(sandbox: MeshSandbox, *, fail: bool = False) -> list[str]:
    """Read the DPS mailbox and answer each extract with JSON Lines (layout version 1)."""
    answered = []
    with sandbox.client(DPS) as dps:
        for mesh_id in dps.list_messages():
            request = dps.retrieve_message(mesh_id)
            data, job_id, filename = request.read(), request.local_id, request.filename
            patients = [line.split("~") for line in data.decode().splitlines() if "DOW~1~" in line]
            lines = [
                {
                    "type": "header",
                    "version": 1,
                    "job_id": job_id,
                    "practice": filename.split("_")[0],
                    "filename": filename,
                }
            ]
            if fail:
                lines.append(
                    {
                        "type": "validation_failure",
                        "errors": [{"line": 2, "message": "DOW~1 record has no NHS number"}],
                    }
                )
            else:
                first = patients[0]
                lines += [
                    {
                        "type": "only_on_gp",
                        "record": {
                            "SURNAME": first[8],
                            "FORENAMES": first[9],
                            "DOB": first[13],
                            "NHS NO.": first[7],
                            "ADD 1": first[14],
                            "ADD 2": first[15],
                            "POSTCODE": "E1   1AA",
                            "TITLE": first[11],
                            "SEX": first[12],
                            "STATUS": "Unmatched",
                            "STATUS DATE": "",
                        },
                    },
                    {
                        "type": "only_on_pds",
                        "record": {
                            "SURNAME": "AINDOW",
                            "FORENAMES": "COMFORT ZULA",
                            "DOB": "1943-05-18",
                            "NHS NO.": "9449304424",
                            "ADD 1": "41 THE KINGSWAY",
                            "POSTCODE": "KT17 1NA",
                            "TITLE": "MRS",
                            "SEX": "female",
                            "DATE ACCEPT.": "1976-08-12",
                        },
                    },
                    *(
                        {
                            "type": "difference",
                            "record": {
                                "nhsNumber": patients[1][7],
                                "gp_name_given": "JANE, MARY",
                                "gp_name_family": patients[1][8],
                                "pds_name_family": "FOE",
                                "ruleId": rule,
                                "guidance": "Manual Validation",
                            },
                        }
                        for rule in ("MN-BR-DB-01", "MN-BR-FN-01")
                    ),
                    {"type": "summary", "patients": len(patients)},
                ]
            body = "".join(json.dumps(line) + "\n" for line in lines).encode()
            dps.send_message(
                HUB,
                body,
                workflow_id="LISTREC_DPS_RESULT",
                filename=f"{job_id}.jsonl",
                local_id=job_id,
            )
            dps.acknowledge_message(mesh_id)
            answered.append(filename)
    return answered


def _pcse_files(sandbox: MeshSandbox) -> dict[str, bytes]:
    with sandbox.client(PCSE) as pcse:
        found = {}
        for mesh_id in pcse.list_messages():
            message = pcse.retrieve_message(mesh_id)
            found[message.filename] = message.read()
        return found


def test_an_extract_goes_to_dps_and_its_results_to_pcse_as_csvs_and_a_summary_email(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        with mesh_sandbox.client(DPS) as dps:
            request = dps.retrieve_message(dps.list_messages()[0])
            assert request.read() == _sample(GP_FILE), "the file goes to DPS unchanged"
            assert (request.filename, request.workflow_id) == (GP_FILE, "LISTREC_DPS_REQUEST")
            job_id = request.local_id
        assert fake_dps(mesh_sandbox) == [GP_FILE]

        files = wait_until(lambda: len(f := _pcse_files(mesh_sandbox)) == 3 and f, timeout=30)
        names = sorted(files)
        assert [re.sub(r"-\d{14}-", "-<time>-", n) for n in names] == [
            f"A82023-CDD-<time>-{job_id}.csv",
            f"A82023-OnlyOnGP-<time>-{job_id}.csv",
            f"A82023-OnlyOnPDS-<time>-{job_id}.csv",
        ]
        tables = {n.split("-")[1]: list(csv.reader(io.StringIO(files[n].decode()))) for n in names}
        assert tables["OnlyOnGP"][0] == _header("output_OnlyOnGP_example.csv")
        assert tables["OnlyOnPDS"][0] == _header("output_OnlyOnPDS_example.csv")
        assert tables["CDD"][0] == _header("output_CDD_example.csv")
        assert tables["OnlyOnGP"][1][:4] == ["SOMEBODY", "JOHN", "20020101", "1234567890"]
        assert [row[-2] for row in tables["CDD"][1:]] == ["MN-BR-DB-01", "MN-BR-FN-01"]
        assert tables["CDD"][1][3] == "JANE, MARY", "a comma inside a value is quoted"

        (email,) = wait_until(lambda: relay.emails(), timeout=30)
        assert email["Subject"].startswith("PDS Comparison run at ")
        assert email["Subject"].endswith(
            f" against Practice: A82023 - {GP_FILE} - Registrations Output"
        )
        body = email.get_content()
        assert "2 patient records were in the GP file" in body
        assert "1 patient records were found on PDS" in body

        job = wait_until(
            lambda: [j for j in list_jobs(running.store) if j["status"] == "completed"]
        )
        assert job[0]["job_id"] == job_id
        assert (job[0]["practice"], job[0]["filename"]) == ("A82023", GP_FILE)
        assert job[0]["statistics"] == {
            "patients": 2,
            "only_on_gp": 1,
            "only_on_pds": 1,
            "differences": 2,
            "patients_with_differences": 1,
            "differences_by_rule": {"MN-BR-DB-01": 1, "MN-BR-FN-01": 1},
        }
    finally:
        running.stop()


@pytest.mark.parametrize(
    "filename",
    ["A82023_GPR4LNA1.CSA.txt", "A82023_GPR4LNA1." + "X" * 280, "A82023_GPR4LNA1.C\u00df"],
    ids=["extension", "longer-than-the-job-column", "upper-cased-outside-ascii"],
)
def test_a_bad_filename_fails_the_job_sends_the_failure_email_and_nothing_to_dps(
    tmp_path, store_url, mesh_sandbox, relay, filename
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    kept = filename[:255]  # MESH allows 300 characters; the job and the email keep 255
    try:
        _send_extract(mesh_sandbox, filename=filename)
        (email,) = wait_until(lambda: relay.emails(), timeout=30)
        subject = " ".join(email["Subject"].split())  # a long subject is folded
        assert subject == f"List Reconciliation: GP file {kept} failed validation"
        assert "is not {ODS}_GPR4{HA}1.{M}{D}{S}" in email.get_content()
        jobs = wait_until(lambda: list_jobs(running.store))
        assert (jobs[0]["status"], jobs[0]["filename"]) == ("failed_validation", kept)
        assert "is not {ODS}_GPR4{HA}1" in jobs[0]["error"]
        wait_until(lambda: _all_settled(running.store))
        assert mesh_sandbox.inbox(DPS) == []
    finally:
        running.stop()


def test_an_extract_too_old_for_the_processing_date_fails(
    tmp_path, store_url, mesh_sandbox, relay, monkeypatch
):
    monkeypatch.setenv(PROCESSING_DATE_ENV, "2020-04-12")
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        jobs = wait_until(lambda: list_jobs(running.store), timeout=30)
        assert jobs[0]["status"] == "failed_validation"
        assert "more than 14 days before 2020-04-12" in jobs[0]["error"]
    finally:
        running.stop()


def test_a_dps_validation_failure_sends_the_failure_email(tmp_path, store_url, mesh_sandbox, relay):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        fake_dps(mesh_sandbox, fail=True)
        (email,) = wait_until(lambda: relay.emails(), timeout=30)
        assert (
            email["Subject"].strip() == f"List Reconciliation: GP file {GP_FILE} failed validation"
        )
        assert "DOW~1 record has no NHS number" in email.get_content()
        wait_until(lambda: list_jobs(running.store)[0]["status"] == "failed_dps_validation")
        assert mesh_sandbox.inbox(PCSE) == []
    finally:
        running.stop()


def test_paused_intake_keeps_receiving_and_processes_the_backlog_in_order_on_resume(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    names = [f"A82023_GPR4LNA1.CS{s}" for s in "ABC"]
    try:
        set_paused(running.store, "gp-extract-intake", True, actor="test", reason="incident")
        for name in names:
            _send_extract(mesh_sandbox, filename=name)
        wait_until(lambda: _count(running.store, "received") == 3, timeout=30)
        wait_until(lambda: mesh_sandbox.inbox(HUB) == [])  # drained, though paused
    finally:
        running.stop()
    assert mesh_sandbox.inbox(DPS) == [] and list_jobs_after(running) == []

    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        wait_until(lambda: running.engine.mesh.pollers[0].last_handshake is True)
        assert _count(running.store, "received") == 3, "still paused after a restart"
        set_paused(running.store, "gp-extract-intake", False, actor="test", reason="over")
        running.engine.processor.wake()
        wait_until(lambda: len(mesh_sandbox.inbox(DPS)) == 3, timeout=30)
        with running.store.read() as conn:
            processed = conn.execute(
                select(messages.c.id, messages.c.source, messages.c.processed_at)
                .where(messages.c.channel == "gp-extract-intake")
                .order_by(messages.c.id)
            ).all()
            forwarded = (
                conn.execute(
                    select(deliveries.c.message_id)
                    .where(deliveries.c.destination == "dps")
                    .order_by(deliveries.c.id)
                )
                .scalars()
                .all()
            )
        assert [json.loads(r.source)["filename"] for r in processed] == names
        assert forwarded == [r.id for r in processed], "the backlog is processed in receive order"
        assert [r.processed_at for r in processed] == sorted(r.processed_at for r in processed)
    finally:
        running.stop()


def list_jobs_after(running: RunningEngine) -> list:
    from router.engine import open_store

    store = open_store(running.engine.config)
    try:
        return list_jobs(store)
    finally:
        store.dispose()


def _count(store, status: str) -> int:
    with store.read() as conn:
        return len(conn.execute(select(messages.c.id).where(messages.c.status == status)).all())


def _all_settled(store) -> bool:
    with store.read() as conn:
        states = conn.scalars(select(deliveries.c.status)).all()
    return bool(states) and all(s == "sent" for s in states)


def _send_results(sandbox: MeshSandbox, job_id: str, lines: list[dict]) -> None:
    """DPS sends ``lines`` (JSON Lines) as the results of ``job_id``."""
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    with sandbox.client(DPS) as dps:
        dps.send_message(
            HUB, body, workflow_id="LISTREC_DPS_RESULT", filename=f"{job_id}.jsonl", local_id=job_id
        )


def _results(job_id: str, *records: dict) -> list[dict]:
    header = {"type": "header", "version": 1, "job_id": job_id, "practice": "A82023"}
    return [{**header, "filename": GP_FILE}, *records, {"type": "summary", "patients": 2}]


def _results_messages(store) -> list:
    """The dps-results channel's messages once all are settled, oldest first."""
    m = messages.c
    with store.read() as conn:
        rows = conn.execute(
            select(m.id, m.uuid, m.status, m.error, m.duplicate_of)
            .where(m.channel == "dps-results")
            .order_by(m.id)
        ).all()
    return rows if rows and all(r.status != "received" for r in rows) else []


def _sent_to(store, destination: str) -> int:
    with store.read() as conn:
        return len(
            conn.scalars(
                select(deliveries.c.id).where(deliveries.c.destination == destination)
            ).all()
        )


def test_results_for_a_job_that_failed_validation_leave_it_failed_and_send_nothing(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox, filename="A82023_GPR4LNA1.CSA.txt")
        (job,) = wait_until(lambda: list_jobs(running.store), timeout=30)
        wait_until(lambda: relay.emails(), timeout=30)  # the failure email
        _send_results(mesh_sandbox, job["job_id"], _results(job["job_id"]))
        (refused,) = wait_until(lambda: _results_messages(running.store), timeout=30)
        assert refused.status == "error"
        assert f"job {job['job_id']} is failed_validation" in refused.error
        (kept,) = list_jobs(running.store)
        assert (kept["status"], kept["error"]) == ("failed_validation", job["error"])
        assert _sent_to(running.store, "pcse") == _sent_to(running.store, "summary-email") == 0
        assert len(relay.emails()) == 1 and mesh_sandbox.inbox(PCSE) == []
    finally:
        running.stop()


def test_results_for_a_job_never_started_send_nothing(tmp_path, store_url, mesh_sandbox, relay):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_results(mesh_sandbox, "no-such-job", _results("no-such-job"))
        (refused,) = wait_until(lambda: _results_messages(running.store), timeout=30)
        assert refused.status == "error"
        assert refused.error.startswith("no job no-such-job: results for a job tie never started")
        assert list_jobs(running.store) == []
        assert _sent_to(running.store, "pcse") == _sent_to(running.store, "summary-email") == 0
        assert relay.emails() == [] and mesh_sandbox.inbox(PCSE) == []
    finally:
        running.stop()


def test_a_second_results_file_for_a_job_is_a_filtered_duplicate_and_sends_nothing(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        fake_dps(mesh_sandbox)
        wait_until(lambda: len(_pcse_files(mesh_sandbox)) == 3, timeout=30)
        (job,) = wait_until(lambda: [j for j in list_jobs(running.store) if j["statistics"]])
        _send_results(mesh_sandbox, job["job_id"], _results(job["job_id"]))
        first, second = wait_until(
            lambda: len(found := _results_messages(running.store)) == 2 and found, timeout=30
        )
        assert (first.status, second.status) == ("processed", "filtered")
        assert second.duplicate_of == first.id
        assert second.error == (
            f"duplicate of {first.uuid}: job {job['job_id']} is completed already; "
            "these results are not sent again"
        )
        assert _sent_to(running.store, "pcse") == 3
        assert _sent_to(running.store, "summary-email") == 1
        assert list_jobs(running.store)[0]["statistics"] == job["statistics"]
        wait_until(lambda: _all_settled(running.store))
        assert len(relay.emails()) == 1 and len(_pcse_files(mesh_sandbox)) == 3
    finally:
        running.stop()


def test_unreadable_results_fail_the_job_with_the_reason_and_send_the_failure_email(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        with mesh_sandbox.client(DPS) as dps:
            job_id = dps.retrieve_message(wait_until(dps.list_messages, timeout=30)[0]).local_id
        _send_results(mesh_sandbox, job_id, [*_results(job_id)[:1], {"type": "surprise"}])
        (email,) = wait_until(lambda: relay.emails(), timeout=30)
        assert " ".join(email["Subject"].split()) == (
            f"List Reconciliation: DPS results for GP file {GP_FILE} could not be read"
        )
        assert "line 2: unknown type 'surprise'" in email.get_content()
        (job,) = wait_until(
            lambda: [j for j in list_jobs(running.store) if j["status"] == "failed_results"]
        )
        assert job["error"] == "line 2: unknown type 'surprise'"
        assert _sent_to(running.store, "pcse") == 0 and mesh_sandbox.inbox(PCSE) == []

        fake_dps(mesh_sandbox)  # DPS sends the results again, readable this time
        wait_until(lambda: list_jobs(running.store)[0]["status"] == "completed", timeout=30)
    finally:
        running.stop()


def test_an_extract_dps_refuses_fails_its_job_with_the_reason(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay, dps_mailbox="X26NOBODY")
    try:
        _send_extract(mesh_sandbox)
        (job,) = wait_until(
            lambda: [j for j in list_jobs(running.store) if j["status"] == "failed_delivery"],
            timeout=30,
        )
        assert job["error"].startswith("delivery to dps failed: MESH refused (code ")
    finally:
        running.stop()


def test_a_non_delivery_report_for_an_extract_fails_its_job(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        (mesh_id,) = wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        wait_until(lambda: _all_settled(running.store))
        assert list_jobs(running.store)[0]["status"] == "sent_to_dps"
        mesh_sandbox.report(HUB, mesh_id, "14", "Message not collected by recipient")
        (job,) = wait_until(
            lambda: [j for j in list_jobs(running.store) if j["status"] == "failed_delivery"],
            timeout=30,
        )
        assert job["error"] == (
            "delivery to dps failed: "
            "MESH non-delivery report 14: Message not collected by recipient"
        )
    finally:
        running.stop()


def _job_in(store, status: str) -> dict:
    return next((j for j in list_jobs(store) if j["status"] == status), None)


def test_a_csv_file_pcse_never_gets_shows_on_the_completed_job(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay, pcse_mailbox="X26NOBODY")
    try:
        _send_extract(mesh_sandbox)
        wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        fake_dps(mesh_sandbox)
        job = wait_until(lambda: _job_in(running.store, "failed_outputs"), timeout=30)
        assert job["error"].startswith("delivery to pcse failed: MESH refused (code ")
        assert job["statistics"]["patients"] == 2, "the results were read"
        wait_until(lambda: relay.emails(), timeout=30)  # the summary email still goes
    finally:
        running.stop()


def test_a_failed_summary_email_shows_on_the_job_until_its_resend_is_sent(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay, summary_to="nobody@example.nhs.uk")
    try:
        _send_extract(mesh_sandbox)
        wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        fake_dps(mesh_sandbox)
        job = wait_until(lambda: _job_in(running.store, "failed_outputs"), timeout=30)
        assert job["error"].startswith("delivery to summary-email failed: ")
        assert "no such mailbox" in job["error"]
        wait_until(lambda: len(_pcse_files(mesh_sandbox)) == 3, timeout=30)
        assert _job_in(running.store, "failed_outputs"), "the CSV files sent change nothing"

        relay.refusing = False
        with running.store.read() as conn:
            failed = conn.scalar(select(deliveries.c.id).where(deliveries.c.status == "failed"))
        resent = resend(running.store, failed, reason="mailbox fixed", actor="test")
        running.engine.replayed("resend", [resent])
        job = wait_until(lambda: _job_in(running.store, "completed"), timeout=30)
        assert job["error"] is None and job["statistics"]["patients"] == 2
        (email,) = relay.emails()
        assert email["Subject"].startswith("PDS Comparison run at ")
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("filename", "answer", "status"),
    [
        (GP_FILE, lambda sandbox: fake_dps(sandbox, fail=True), "failed_dps_validation"),
        ("A82023_GPR4LNA1.CSA.txt", None, "failed_validation"),
    ],
    ids=["dps-validation", "bad-file-name"],
)
def test_a_failure_email_the_relay_refuses_shows_on_the_job_until_its_resend_is_sent(
    tmp_path, store_url, mesh_sandbox, relay, filename, answer, status
):
    """The practice is never told its file failed: the job keeps DPS's reasons (its status
    stays) and also names the failure email that could not be sent."""
    running = _engine(tmp_path, store_url, mesh_sandbox, relay, failure_to="nobody@example.nhs.uk")
    try:
        _send_extract(mesh_sandbox, filename=filename)
        if answer is not None:
            wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
            answer(mesh_sandbox)
        job = wait_until(
            lambda: next((j for j in list_jobs(running.store) if j["undelivered"]), None),
            timeout=30,
        )
        assert job["status"] == status
        with running.store.read() as conn:
            failed = conn.execute(
                select(deliveries.c.id, deliveries.c.last_error).where(
                    deliveries.c.status == "failed"
                )
            ).one()
        assert job["undelivered"] == [
            {
                "delivery_id": failed.id,
                "destination": "failure-email",
                "error": failed.last_error,
                "original": failed.id,
            }
        ]
        assert "no such mailbox" in failed.last_error

        relay.refusing = False
        resent = resend(running.store, failed.id, reason="address fixed", actor="test")
        running.engine.replayed("resend", [resent])
        wait_until(lambda: relay.emails(), timeout=30)
        job = wait_until(
            lambda: next((j for j in list_jobs(running.store) if not j["undelivered"]), None),
            timeout=30,
        )
        assert job["status"] == status, "the resend changes the mark, not the state"
    finally:
        running.stop()


@pytest.mark.parametrize(
    "first_line",
    [{"type": "surprise"}, {"type": "header", "version": 1, "job_id": "../x"}],
    ids=["no-header", "bad-job-id"],
)
def test_results_with_an_unreadable_header_fail_the_job_their_mesh_local_id_names(
    tmp_path, store_url, mesh_sandbox, relay, first_line
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        with mesh_sandbox.client(DPS) as dps:
            job_id = dps.retrieve_message(wait_until(dps.list_messages, timeout=30)[0]).local_id
        _send_results(mesh_sandbox, job_id, [first_line, {"type": "summary", "patients": 2}])
        (job,) = wait_until(
            lambda: [j for j in list_jobs(running.store) if j["status"] == "failed_results"],
            timeout=30,
        )
        assert job["error"].startswith("line 1: ")
        assert (job["practice"], job["filename"]) == ("A82023", GP_FILE), "kept from the intake"
        (email,) = wait_until(lambda: relay.emails(), timeout=30)
        assert " ".join(email["Subject"].split()) == (
            f"List Reconciliation: DPS results for job {job_id} could not be read"
        )
        assert job["error"] in email.get_content()
        assert _sent_to(running.store, "pcse") == 0

        fake_dps(mesh_sandbox)  # DPS sends the results again, readable this time
        wait_until(lambda: list_jobs(running.store)[0]["status"] == "completed", timeout=30)
    finally:
        running.stop()


def test_results_with_an_unreadable_header_and_no_local_id_are_an_error_with_the_reason(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        with mesh_sandbox.client(DPS) as dps:
            dps.send_message(HUB, b"not json\n", workflow_id="LISTREC_DPS_RESULT", filename="r")
        (message,) = wait_until(lambda: _results_messages(running.store), timeout=30)
        assert message.status == "error"
        assert "line 1: not JSON" in message.error
        assert list_jobs(running.store) == [] and relay.emails() == []
    finally:
        running.stop()


def _intake_messages(store, count: int) -> list:
    m = messages.c
    with store.read() as conn:
        rows = conn.execute(
            select(m.id, m.uuid, m.status, m.error, m.duplicate_of)
            .where(m.channel == "gp-extract-intake")
            .order_by(m.id)
        ).all()
    return rows if len(rows) == count and all(r.status != "received" for r in rows) else []


def test_the_same_file_sent_twice_goes_to_dps_once(tmp_path, store_url, mesh_sandbox, relay):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        _send_extract(mesh_sandbox)
        first, second = wait_until(lambda: _intake_messages(running.store, 2), timeout=30)
        assert (first.status, second.status) == ("processed", "filtered")
        assert second.duplicate_of == first.id
        assert second.error.startswith(f"duplicate of {first.uuid}: GP file {GP_FILE} ")
        wait_until(lambda: _all_settled(running.store))
        assert len(mesh_sandbox.inbox(DPS)) == 1
        assert [j["job_id"] for j in list_jobs(running.store)] == [first.uuid]
    finally:
        running.stop()


def test_a_file_sent_again_with_other_content_is_a_new_job(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        _send_extract(mesh_sandbox, data=_sample(GP_FILE) + b"\n")
        wait_until(lambda: _intake_messages(running.store, 2), timeout=30)
        wait_until(lambda: len(mesh_sandbox.inbox(DPS)) == 2, timeout=30)
        assert len(list_jobs(running.store)) == 2
    finally:
        running.stop()


def test_a_non_delivery_report_for_a_csv_file_shows_on_the_completed_job(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        wait_until(lambda: mesh_sandbox.inbox(DPS), timeout=30)
        fake_dps(mesh_sandbox)
        first, *_ = wait_until(lambda: len(i := mesh_sandbox.inbox(PCSE)) == 3 and i, timeout=30)
        wait_until(lambda: _all_settled(running.store))
        assert _job_in(running.store, "completed")
        mesh_sandbox.report(HUB, first, "14", "Message not collected by recipient")
        job = wait_until(lambda: _job_in(running.store, "failed_outputs"), timeout=30)
        assert job["error"] == (
            "delivery to pcse failed: "
            "MESH non-delivery report 14: Message not collected by recipient"
        )
    finally:
        running.stop()


def test_results_sent_twice_and_processed_together_name_the_first_as_the_original(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        with mesh_sandbox.client(DPS) as dps:
            job_id = dps.retrieve_message(wait_until(dps.list_messages, timeout=30)[0]).local_id
        set_paused(running.store, "dps-results", True, actor="test", reason="batch them")
        _send_results(mesh_sandbox, job_id, _results(job_id))
        _send_results(mesh_sandbox, job_id, _results(job_id))
        wait_until(lambda: _count(running.store, "received") == 2, timeout=30)
        set_paused(running.store, "dps-results", False, actor="test", reason="over")
        running.engine.processor.wake()
        first, second = wait_until(lambda: _results_messages(running.store), timeout=30)
        assert (first.status, second.status) == ("processed", "filtered")
        assert second.duplicate_of == first.id
        assert second.error.startswith(f"duplicate of {first.uuid}: job {job_id} is completed")
    finally:
        running.stop()


def test_results_naming_another_practices_file_for_a_job_send_nothing(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox)
        with mesh_sandbox.client(DPS) as dps:
            job_id = dps.retrieve_message(wait_until(dps.list_messages, timeout=30)[0]).local_id
        other = {"practice": "B12345", "filename": "B12345_GPR4LNA1.CSA"}
        _send_results(
            mesh_sandbox, job_id, [{**_results(job_id)[0], **other}, *_results(job_id)[1:]]
        )
        (refused,) = wait_until(lambda: _results_messages(running.store), timeout=30)
        assert refused.status == "error"
        assert refused.error == (
            f"job {job_id} is GP file {GP_FILE} of practice A82023; these results name "
            "B12345_GPR4LNA1.CSA of practice B12345: not sent"
        )
        (job,) = list_jobs(running.store)
        assert (job["status"], job["practice"]) == ("sent_to_dps", "A82023")
        assert _sent_to(running.store, "pcse") == 0 and relay.emails() == []
    finally:
        running.stop()


def test_a_chunked_extract_goes_to_dps_whole_and_chunked_results_make_the_csvs(
    tmp_path, store_url, mesh_sandbox, relay
):
    """MESH splits a large file into chunks (20 MiB on live MESH; 1 MiB here): the extract
    reaches DPS byte for byte, and results in chunks are read as one stream."""
    running = _engine(tmp_path, store_url, mesh_sandbox, relay, chunk="1MiB")
    patient = b"DOW~1~~~~~~%010d~SMITH~JOHN~~MR~1~20020101~1 HIGH ST~LONDON\r\nDOW~2~~~\r\n"
    extract = _sample(GP_FILE) + b"".join(patient % i for i in range(40_000))
    try:
        with mesh_sandbox.client(GP, max_chunk_size=1024 * 1024) as gp:
            gp.send_message(HUB, extract, workflow_id="LISTREC_GP_EXTRACT", filename=GP_FILE)
        with mesh_sandbox.client(DPS) as dps:
            request = dps.retrieve_message(wait_until(dps.list_messages, timeout=60)[0])
            assert request.mex_header("chunk-range") == "1:3"
            assert request.read() == extract, "the file goes to DPS unchanged"
            job_id = request.local_id
        difference = {"type": "difference", "record": {"nhsNumber": "1", "ruleId": "MN-BR-DB-01"}}
        body = "".join(json.dumps(line) + "\n" for line in _results(job_id, *[difference] * 40_000))
        with mesh_sandbox.client(DPS, max_chunk_size=1024 * 1024) as dps:
            dps.send_message(HUB, body.encode(), workflow_id="LISTREC_DPS_RESULT", local_id=job_id)
        files = wait_until(lambda: len(f := _pcse_files(mesh_sandbox)) == 3 and f, timeout=60)
        (cdd,) = [data for name, data in files.items() if "-CDD-" in name]
        assert len(cdd.splitlines()) == 1 + 40_000
        job = wait_until(lambda: _job_in(running.store, "completed"), timeout=30)
        assert job["statistics"]["differences"] == 40_000
    finally:
        running.stop()


def test_unreadable_results_whose_local_id_names_no_job_keep_why_they_could_not_be_read(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        with mesh_sandbox.client(DPS) as dps:
            dps.send_message(
                HUB, b"not json\n", workflow_id="LISTREC_DPS_RESULT", local_id="no-such-job"
            )
        (message,) = wait_until(lambda: _results_messages(running.store), timeout=30)
        assert message.status == "error"
        assert message.error.startswith("no job no-such-job: results for a job tie never started")
        assert message.error.endswith("(line 1: not JSON: Expecting value)")
    finally:
        running.stop()


def test_two_jobs_of_a_practice_whose_results_come_in_one_second_send_pcse_distinct_files(
    tmp_path, store_url, mesh_sandbox, relay
):
    """The CSV names carry the time to the second: two GP files of one practice (split
    files, say) answered in the same second must not give PCSE two files of one name."""
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        _send_extract(mesh_sandbox, filename="A82023_GPR4LNA1.CSA")
        _send_extract(mesh_sandbox, filename="A82023_GPR4LNA1.CSB")
        wait_until(lambda: len(mesh_sandbox.inbox(DPS)) == 2, timeout=30)
        set_paused(running.store, "dps-results", True, actor="test", reason="batch them")
        assert len(fake_dps(mesh_sandbox)) == 2
        wait_until(lambda: _count(running.store, "received") == 2, timeout=30)
        with running.store.begin() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.channel == "dps-results")
                .values(received_at=list_jobs(running.store)[0]["received_at"])
            )
        set_paused(running.store, "dps-results", False, actor="test", reason="over")
        running.engine.processor.wake()
        wait_until(lambda: len(mesh_sandbox.inbox(PCSE)) == 6, timeout=30)
        with mesh_sandbox.client(PCSE) as pcse:
            names = [pcse.retrieve_message(i).filename for i in pcse.list_messages()]
        assert len(set(names)) == 6, names
        jobs = {j["job_id"] for j in list_jobs(running.store)}
        assert {n.split("-", 3)[3].removesuffix(".csv") for n in names} == jobs
    finally:
        running.stop()


def _prune(running: RunningEngine, *names: str) -> None:
    """Retention (keeping a day) run two days on, on ``names``."""
    pruner = Pruner(running.store)
    for name in names:
        channel = running.engine.channels[name].config.model_copy(
            update={"retention": RetentionPolicy(keep=86400)}
        )
        pruner.prune(channel, now=datetime.now(UTC) + timedelta(days=2))


def _report_message(store) -> dict | None:
    m = messages.c
    with store.read() as conn:
        row = conn.execute(
            select(m.id, m.status, m.error).where(m.message_type == "REPORT")
        ).first()
        if row is None:
            return None
        keys = conn.execute(
            select(correlations.c.key, correlations.c.value).where(
                correlations.c.message_id == row.id
            )
        ).all()
    return {"status": row.status, "error": row.error, "keys": [tuple(k) for k in keys]}


def _completed_job_then_a_newer_message(
    running: RunningEngine, sandbox: MeshSandbox
) -> tuple[dict, str]:
    """A job completed, its outputs sent, and the MESH message id of its file to DPS; then a
    newer message (retention keeps the newest)."""
    _send_extract(sandbox)
    (to_dps,) = wait_until(lambda: sandbox.inbox(DPS), timeout=30)
    fake_dps(sandbox)
    wait_until(lambda: len(sandbox.inbox(PCSE)) == 3, timeout=30)
    job = wait_until(lambda: _job_in(running.store, "completed"), timeout=30)
    _send_extract(sandbox, filename="A82023_GPR4LNA1.CSA.txt")
    wait_until(lambda: _job_in(running.store, "failed_validation"), timeout=30)
    wait_until(lambda: _all_settled(running.store), timeout=30)
    return job, to_dps


def test_a_late_report_for_a_csv_file_whose_results_retention_removed_fails_the_job(
    tmp_path, store_url, mesh_sandbox, relay
):
    """The results' channel keeps its messages less long than the intake keeps the job: a
    report for one of their CSV files then names a delivery the store no longer has. The
    report's local id (the original's, which MESH copies) names the job: it shows there."""
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        job, _ = _completed_job_then_a_newer_message(running, mesh_sandbox)
        _prune(running, "dps-results")
        assert _results_messages(running.store) == [], "the results message is gone"
        with mesh_sandbox.client(PCSE) as pcse:
            first = pcse.retrieve_message(pcse.list_messages()[0])
            mesh_id, local_id = first.message_id, first.local_id
        mesh_sandbox.report(HUB, mesh_id, "14", "Message not collected by recipient", local_id)
        failed = wait_until(lambda: _job_in(running.store, "failed_outputs"), timeout=30)
        assert failed["job_id"] == job["job_id"]
        assert failed["error"] == (
            f"MESH message {mesh_id} (local id {local_id}) failed: MESH non-delivery report 14: "
            "Message not collected by recipient; its delivery is no longer stored (retention"
            " removed it), so it cannot be resent: send it again from the archive"
        )
        report = wait_until(lambda: _report_message(running.store), timeout=30)
        assert report["status"] == "filtered"
        assert report["keys"] == [("dps_job", job["job_id"])], "on the job's timeline"
    finally:
        running.stop()


def test_a_late_report_for_a_file_whose_job_retention_removed_is_an_error_with_the_reason(
    tmp_path, store_url, mesh_sandbox, relay
):
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        job, mesh_id = _completed_job_then_a_newer_message(running, mesh_sandbox)
        _prune(running, "gp-extract-intake", "dps-results")
        assert [j["status"] for j in list_jobs(running.store)] == ["failed_validation"]
        mesh_sandbox.report(HUB, mesh_id, "14", "Message not collected by recipient", job["job_id"])
        report = wait_until(lambda: _report_message(running.store), timeout=30)
        assert report["status"] == "error"
        assert report["error"] == (
            f"non-delivery report for MESH message {mesh_id} (local id {job['job_id']}), which no"
            " delivery in the store sent: tie did not send it, or retention has removed its"
            " delivery (and any job it names): MESH non-delivery report 14: Message not"
            " collected by recipient"
        )
        assert report["keys"] == []
    finally:
        running.stop()


def _intake_kept(store, job_id: str) -> bool:
    with store.read() as conn:
        return conn.scalar(select(messages.c.id).where(messages.c.uuid == job_id)) is not None


def test_a_job_failed_by_a_late_report_is_closed_by_support_and_retention_then_settles_it(
    tmp_path, store_url, mesh_sandbox, relay
):
    """The CSV file's delivery is gone, so no resend can bring the job back to completed:
    without a close it would stay failed_outputs, and its intake message kept, for ever."""
    running = _engine(tmp_path, store_url, mesh_sandbox, relay)
    try:
        job, _ = _completed_job_then_a_newer_message(running, mesh_sandbox)
        _prune(running, "dps-results")
        with mesh_sandbox.client(PCSE) as pcse:
            first = pcse.retrieve_message(pcse.list_messages()[0])
        mesh_sandbox.report(HUB, first.message_id, "14", "Not collected", first.local_id)
        failed = wait_until(lambda: _job_in(running.store, "failed_outputs"), timeout=30)
        _prune(running, "gp-extract-intake")
        assert _intake_kept(running.store, job["job_id"]), "kept while failed_outputs"

        closed = close_job(
            running.store, job["job_id"], reason="CSV sent to PCSE from the archive", actor="sam"
        )
        assert closed["status"] == "closed"
        (listed,) = [j for j in list_jobs(running.store) if j["job_id"] == job["job_id"]]
        assert listed["closed_from"] == "failed_outputs"
        assert (listed["closed_by"], listed["close_reason"]) == (
            "sam",
            "CSV sent to PCSE from the archive",
        )
        assert listed["error"] == failed["error"], "why it failed stays"
        with running.store.read() as conn:
            event = conn.execute(
                select(audit_events).where(audit_events.c.action == "job.close")
            ).one()
        assert (event.actor, event.target) == ("sam", f"job:{job['job_id']}")
        assert json.loads(event.details)["reason"] == "CSV sent to PCSE from the archive"

        _prune(running, "gp-extract-intake")
        assert not _intake_kept(running.store, job["job_id"]), "settled: retention removes it"
        assert all(j["job_id"] != job["job_id"] for j in list_jobs(running.store))
    finally:
        running.stop()
