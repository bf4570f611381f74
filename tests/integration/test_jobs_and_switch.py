"""``run.py jobs --json``, and the post-office switch through the HTTP API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
import yaml
from sqlalchemy import Connection, select, text, update
from tie_testing import RunningEngine, api_token, channel, engine_config, wait_until

from router.cli import main
from router.connectors import Delivery
from router.dps.closing import close_job
from router.dps.jobs import JobSender, apply, job_record, list_jobs, lock_key, settled
from router.dps.overdue import count_overdue
from router.engine import Engine
from router.local_destinations import Local, Refusal
from router.metrics import QueueCollector
from router.outcomes import write_outcomes
from router.pipeline import Outcome, PlannedDelivery
from router.replay import resend_many
from router.store.database import Store
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.migrate import upgrade
from router.store.retention import removable_ids
from router.store.schema import (
    audit_events,
    channel_state,
    correlations,
    deliveries,
    jobs,
    messages,
)

TOKEN = "tie_switch-test-token"


def _record(store: Store, job_id: str, payload: bytes) -> str:
    delivery = Delivery(1, 1, "u", "c", "job", payload, "application/json", "", None, 0)
    result = asyncio.run(JobSender(store).send(delivery))
    assert result.outcome == "sent", result.error
    return json.loads(result.response)["status"]


def test_jobs_are_upserted_and_listed_as_json(tmp_path, store_url, capsys, monkeypatch):
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    try:
        stats = {"patients": 2, "only_on_gp": 1, "only_on_pds": 0, "differences": 3}
        record = job_record(
            "job-1",
            "sent_to_dps",
            practice="A82023",
            filename="A82023_GPR4LNA1.CSA",
            received_at="2020-04-10T09:00:00+00:00",
        )
        assert _record(store, "job-1", record) == "sent_to_dps"
        assert _record(store, "job-1", job_record("job-1", "completed", statistics=stats)) == (
            "completed"
        )
        assert _record(store, "job-1", job_record("job-1", "sent_to_dps")) == "completed", (
            "a late step never reopens a finished job"
        )
    finally:
        store.dispose()
    config = tmp_path / "engine.yaml"
    (tmp_path / "channels").mkdir()
    config.write_text(yaml.safe_dump({"store": store_url, "channels": "channels"}))
    capsys.readouterr()
    assert main(["--config", str(config), "jobs", "--json"]) == 0
    (job,) = json.loads(capsys.readouterr().out)
    assert (job["job_id"], job["status"], job["practice"]) == ("job-1", "completed", "A82023")
    assert job["statistics"] == stats
    assert main(["--config", str(config), "jobs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:5] == ["JOB_ID", "PRACTICE", "FILENAME", "RECEIVED_AT", "STATUS"]
    assert "completed" in table[1] and "A82023_GPR4LNA1.CSA" in table[1]


def test_pause_and_resume_through_the_api(tmp_path, store_url, monkeypatch):
    api_token(store_url, token=TOKEN)
    out = tmp_path / "out"
    feed = channel(
        {
            "name": "intake",
            "source": {"channel": {}},
            "destinations": {"out": {"file": {"directory": str(out), "name": "{message_id}"}}},
        }
    )
    running = RunningEngine(engine_config(tmp_path, store_url), {"intake": feed}, http=True)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{running.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    try:
        answer = client.post("/api/channels/intake/pause", json={"reason": "incident 42"})
        assert answer.json() == {"channel": "intake", "paused": True}
        for n in range(3):
            running.engine.writer.submit_sync(Inbound("intake", f"file {n}".encode(), "text/plain"))
        (row,) = client.get("/api/channels").json()
        assert (row["paused"], row["unprocessed"]) == (True, 3)
        assert list(out.glob("*")) == []

        assert client.post("/api/channels/intake/resume", json={}).json()["paused"] is False
        wait_until(lambda: len(list(out.glob("*"))) == 3)
        with running.store.read() as conn:
            assert conn.scalar(select(channel_state.c.paused)) is False
            assert set(conn.scalars(select(messages.c.status))) == {"processed"}
            actions = conn.scalars(
                select(audit_events.c.action)
                .where(audit_events.c.target == "channel:intake")
                .order_by(audit_events.c.id)
            )
            assert list(actions) == ["pause", "resume"]
        assert client.post("/api/channels/nope/pause").status_code == 404
        assert httpx.post(f"{client.base_url}/api/channels/intake/pause").status_code == 401
    finally:
        client.close()
        running.stop()


def test_the_jobs_state_decides_which_records_apply(store_url):
    store = Store(store_url)
    upgrade(store)
    try:
        with store.begin() as conn:
            assert apply(conn, job_record("j", "sent_to_dps", practice="A82023"), 1) is None
            assert apply(conn, job_record("j", "failed_results", error="line 2"), 2) is None
            assert apply(conn, job_record("j", "completed", statistics={"patients": 1}), 3) is None
            assert apply(conn, job_record("j", "sent_to_dps"), 4) is None, "a start again: no-op"
            duplicate = apply(conn, job_record("j", "completed", statistics={}), 5)
            assert duplicate == Refusal(
                "filtered", "job j is completed already; these results are not sent again"
            )
            unknown = apply(conn, job_record("k", "completed"), 6)
            assert unknown is not None and unknown.status == "error"
            assert unknown.reason.startswith("no job k: ")
        with store.begin() as conn:
            assert apply(conn, job_record("d", "sent_to_dps"), 7) is None
            conn.execute(update(jobs).where(jobs.c.job_id == "d").values(status="failed_delivery"))
            assert apply(conn, job_record("d", "completed"), 8) is None, "resent, answered"
        with store.begin() as conn:
            assert apply(conn, job_record("o", "sent_to_dps"), 9) is None
            conn.execute(update(jobs).where(jobs.c.job_id == "o").values(status="failed_outputs"))
            again = apply(conn, job_record("o", "completed"), 10)
            assert again is not None and again.status == "filtered", (
                "an output that failed is resent, not made again from new results"
            )
        found = {j["job_id"]: j for j in list_jobs(store)}
        assert (found["j"]["status"], found["j"]["statistics"]) == ("completed", {"patients": 1})
        assert found["d"]["status"] == "completed"
        assert found["o"]["status"] == "failed_outputs"
    finally:
        store.dispose()


def test_a_gp_file_received_again_is_a_duplicate_only_while_its_job_went_on(store_url):
    store = Store(store_url)
    upgrade(store)
    name = "A82023_GPR4LNA1.CSA"
    try:
        with store.begin() as conn:
            files = [Inbound("intake", b"503\\*\nDOW~1~", "text/plain") for _ in range(3)]
            write_inbound(conn, files)
            ids = dict(conn.execute(select(messages.c.uuid, messages.c.id)).all())
        first, second, third = ((f.uuid, ids[f.uuid]) for f in files)
        with store.begin() as conn:
            assert apply(conn, job_record(first[0], "sent_to_dps", filename=name), first[1]) is None
            repeat = apply(conn, job_record(second[0], "sent_to_dps", filename=name), second[1])
            assert repeat is not None and repeat.status == "filtered"
            assert repeat.duplicate_of == first[1]
            assert repeat.reason.startswith(f"duplicate of {first[0]}: GP file {name} ")
            conn.execute(
                update(jobs).where(jobs.c.job_id == first[0]).values(status="failed_delivery")
            )
            again = apply(conn, job_record(third[0], "sent_to_dps", filename=name), third[1])
            assert again is None, "a file whose job failed on the way may be sent again"
        assert {j["job_id"] for j in list_jobs(store)} == {first[0], third[0]}
    finally:
        store.dispose()


class _Unusable:
    """A connection that fails if anything is asked of it."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the connection was used ({name})")


def test_only_a_channel_that_records_jobs_looks_its_settled_deliveries_up(tmp_path, store_url):
    """The dispatcher tells the engine of every round's settled deliveries; a channel with no
    ``job`` destination (every HL7 and FHIR feed) must cost that round no query."""
    out = {"out": {"file": {"directory": str(tmp_path / "out"), "name": "{message_id}"}}}
    plain = channel({"name": "plain", "source": {"channel": {}}, "destinations": out})
    recording = channel(
        {"name": "recording", "source": {"channel": {}}, "destinations": {"job": {"job": {}}}}
    )
    engine = Engine(engine_config(tmp_path, store_url), {"plain": plain, "recording": recording})
    try:
        engine.deliveries_settled(_Unusable(), "plain", [1, 2, 3])  # type: ignore[arg-type]
        with pytest.raises(AssertionError, match="the connection was used"):
            engine.deliveries_settled(_Unusable(), "recording", [1])  # type: ignore[arg-type]
    finally:
        engine.store.dispose()


def _waiting_or_done(store: Store, worker: threading.Thread) -> bool:
    """Whether ``worker`` finished, or waits on a row lock another transaction holds."""
    if not worker.is_alive():
        return True
    with store.read() as conn:
        waits = conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    return bool(waits)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_the_last_two_resent_outputs_sent_side_by_side_complete_the_job(store_url):
    """The CSV files and the summary email have a worker each: on PostgreSQL their rounds
    settle side by side, and each must see the other's outcome before judging the job."""
    store = Store(store_url)
    upgrade(store)
    now = utcnow()
    row = {"content_type": "text/plain", "payload": b"x", "next_attempt_at": now}
    try:
        with store.begin() as conn:
            conn.execute(jobs.insert().values(job_id="j", status="failed_outputs", updated_at=now))
            results = conn.execute(
                messages.insert().values(
                    uuid="r",
                    channel="dps-results",
                    received_at=now,
                    status="processed",
                    content_type="application/x-ndjson",
                    size=1,
                    raw=b"x",
                )
            ).inserted_primary_key[0]
            conn.execute(correlations.insert().values(message_id=results, key="dps_job", value="j"))
            copies = []
            for destination in ("pcse", "summary-email"):
                values = {**row, "message_id": results, "channel": "dps-results"}
                values |= {"destination": destination, "created_at": now, "updated_at": now}
                first = conn.execute(deliveries.insert().values(**values, status="resent"))
                copy = deliveries.insert().values(
                    **values, status="sending", resent_from=first.inserted_primary_key[0]
                )
                copies.append(conn.execute(copy).inserted_primary_key[0])

        def sent(conn: Connection, delivery: int) -> None:
            conn.execute(
                update(deliveries).where(deliveries.c.id == delivery).values(status="sent")
            )
            settled(conn, [delivery], {("dps-results", "job")})

        with store.begin() as conn:
            sent(conn, copies[0])
            other = threading.Thread(target=lambda: store.run(lambda c: sent(c, copies[1])))
            other.start()
            wait_until(lambda: _waiting_or_done(store, other))
        other.join()
        assert list_jobs(store)[0]["status"] == "completed"
    finally:
        store.dispose()


def _results_with_failure_email(conn: Connection, job_id: str) -> tuple[int, dict[str, object]]:
    """A ``failed_dps_validation`` job, its results message and the columns of a delivery of
    that message's failure email."""
    now = utcnow()
    conn.execute(
        jobs.insert().values(job_id=job_id, status="failed_dps_validation", updated_at=now)
    )
    results = conn.execute(
        messages.insert().values(
            uuid=f"results-of-{job_id}",
            channel="dps-results",
            received_at=now,
            status="processed",
            content_type="application/x-ndjson",
            size=1,
            raw=b"x",
        )
    ).inserted_primary_key[0]
    conn.execute(correlations.insert().values(message_id=results, key="dps_job", value=job_id))
    delivery = {"message_id": results, "channel": "dps-results", "destination": "failure-email"}
    delivery |= {"content_type": "text/plain", "payload": b"x", "next_attempt_at": now}
    return results, delivery | {"created_at": now, "updated_at": now}


def _settle(store: Store, status: str, error: str | None = None, **delivery: object) -> int:
    with store.begin() as conn:
        row = deliveries.insert().values(**delivery, status=status, last_error=error)
        delivery_id = conn.execute(row).inserted_primary_key[0]
        settled(conn, [delivery_id], {("dps-results", "job")})
    return delivery_id


def test_an_undelivered_output_is_named_on_its_job_until_a_resend_of_it_is_sent(
    tmp_path, store_url, capsys, monkeypatch
):
    """Whatever the job's status: a resend that fails again takes its copy's place (the
    output is still undelivered), and a resend sent clears it, also one made from the
    first failed copy while a later one failed."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    try:
        with store.begin() as conn:
            _, delivery = _results_with_failure_email(conn, "v")
        first = _settle(store, "failed", "550 5.1.1 no such mailbox", **delivery)
        second = _settle(store, "failed", "550 again", **delivery, resent_from=first)
        (job,) = list_jobs(store)
        assert job["status"] == "failed_dps_validation"
        assert job["undelivered"] == [
            {
                "delivery_id": second,
                "destination": "failure-email",
                "error": "550 again",
                "original": first,
            }
        ]
        config = tmp_path / "engine.yaml"
        (tmp_path / "channels").mkdir()
        config.write_text(yaml.safe_dump({"store": store_url, "channels": "channels"}))
        capsys.readouterr()
        assert main(["--config", str(config), "jobs"]) == 0
        header, line = capsys.readouterr().out.splitlines()
        assert "UNDELIVERED" in header.split()
        assert f"failure-email #{second}" in line and "failed_dps_validation" in line
        assert main(["--config", str(config), "jobs", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["undelivered"] == job["undelivered"]

        _settle(store, "sent", **delivery, resent_from=first)
        (job,) = list_jobs(store)
        assert (job["status"], job["undelivered"]) == ("failed_dps_validation", [])
    finally:
        store.dispose()


def _cli(tmp_path, store_url: str) -> list[str]:
    config = tmp_path / "engine.yaml"
    (tmp_path / "channels").mkdir(exist_ok=True)
    config.write_text(yaml.safe_dump({"store": store_url, "channels": "channels"}))
    return ["--config", str(config)]


def test_support_closes_only_a_failed_job_nothing_else_ends_and_later_results_are_filtered(
    tmp_path, store_url, capsys, monkeypatch
):
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    try:
        with store.begin() as conn:
            for job_id, step in (("s", None), ("f", "failed_results"), ("c", "completed")):
                assert apply(conn, job_record(job_id, "sent_to_dps"), 1) is None
                if step:
                    assert apply(conn, job_record(job_id, step, error="line 2: bad"), 2) is None
        cli = _cli(tmp_path, store_url)
        capsys.readouterr()
        close = [*cli, "jobs", "close"]
        assert main([*close, "s", "--reason", "late", "--actor", "sam"]) == 1
        assert "job s is sent_to_dps: only a " in capsys.readouterr().err
        assert main([*close, "c", "--reason", "done", "--actor", "sam"]) == 1
        assert "it is finished already" in capsys.readouterr().err
        assert main([*close, "nope", "--reason", "x", "--actor", "sam"]) == 1
        assert capsys.readouterr().err == "error: no job nope\n"
        assert main([*close, "f", "--reason", " ", "--actor", "sam"]) == 1
        assert "a reason is required" in capsys.readouterr().err

        assert main([*close, "f", "--reason", "DPS will not answer", "--actor", "sam"]) == 0
        assert capsys.readouterr().out == "job f closed (was failed_results)\n"
        with store.begin() as conn:
            later = apply(conn, job_record("f", "completed", statistics={}), 3)
        assert later == Refusal(
            "filtered",
            "job f was closed: failed_results, closed by sam: DPS will not answer; not sent",
        )
        found = {j["job_id"]: j for j in list_jobs(store)}
        assert [found[j]["status"] for j in "sfc"] == ["sent_to_dps", "closed", "completed"]
        assert found["f"]["error"] == "line 2: bad", "why it failed stays"
        with store.read() as conn:
            events = conn.execute(select(audit_events.c.actor, audit_events.c.action)).all()
        assert [tuple(e) for e in events] == [("sam", "job.close")], "refusals record nothing"
        assert main([*cli, "jobs"]) == 0
        (line,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("f ")]
        assert "closed by sam (was failed_results): DPS will not answer" in line
    finally:
        store.dispose()


def test_a_closed_job_lets_retention_remove_its_intake_while_a_failed_output_keeps_its_own(
    store_url,
):
    """Closing settles the job, not its deliveries: a failed one keeps its message."""
    store = Store(store_url)
    upgrade(store)
    later = utcnow() + timedelta(days=2)
    try:
        with store.begin() as conn:
            results, delivery = _results_with_failure_email(conn, "x")
            conn.execute(update(jobs).values(status="failed_outputs"))
            intake = conn.execute(
                messages.insert().values(
                    uuid="x",
                    channel="gp-extract-intake",
                    received_at=utcnow(),
                    status="processed",
                    content_type="text/plain",
                    size=1,
                    raw=b"x",
                )
            ).inserted_primary_key[0]
            newest = {"channel": "other", "status": "processed", "content_type": "text/plain"}
            conn.execute(
                messages.insert().values(uuid="n", received_at=utcnow(), size=1, raw=b"x", **newest)
            )
        _settle(store, "failed", "550 no such mailbox", **delivery)
        with store.read() as conn:
            assert removable_ids(conn, "gp-extract-intake", later, 10) == []
        close_job(store, "x", reason="practice told by phone", actor="sam")
        with store.read() as conn:
            assert removable_ids(conn, "gp-extract-intake", later, 10) == [intake]
            assert removable_ids(conn, "dps-results", later, 10) == [], f"{results} keeps"
    finally:
        store.dispose()


def test_closing_a_job_over_the_api_needs_support_and_a_reason(tmp_path, store_url):
    api_token(store_url, "support", token=TOKEN)
    store = Store(store_url)
    try:
        with store.begin() as conn:
            assert apply(conn, job_record("d", "sent_to_dps"), 1) is None
            conn.execute(update(jobs).values(status="failed_delivery"))
            then = utcnow() - timedelta(days=2)
            conn.execute(jobs.insert().values(job_id="w", status="sent_to_dps", updated_at=then))
    finally:
        store.dispose()
    running = RunningEngine(engine_config(tmp_path, store_url), {}, http=True)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{running.http_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    try:
        assert client.post("/api/jobs/d/close", json={"reason": " "}).status_code == 422
        assert client.post("/api/jobs/d/close", json={}).status_code == 422
        assert client.post("/api/jobs/nope/close", json={"reason": "x"}).status_code == 404
        answer = client.post("/api/jobs/d/close", json={"reason": "GP sent a new file"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["closed_from"] == "failed_delivery"
        assert answer.json()["closed_by"] == "operator"
        again = client.post("/api/jobs/d/close", json={"reason": "twice"})
        assert again.status_code == 409 and "job d is closed" in again.json()["detail"]
        found = {j["job_id"]: j for j in client.get("/api/jobs").json()}
        assert (found["d"]["status"], found["d"]["close_reason"]) == (
            "closed",
            "GP sent a new file",
        )
        assert [(j["overdue"], j["closable"]) for j in found.values()] == [
            (False, False),
            (True, False),
        ]
    finally:
        client.close()
        running.stop()


def test_a_resend_sent_from_any_copy_of_an_output_clears_its_undelivered_mark(store_url):
    """An output is the chain of resends from its first delivery: a resend sent from an
    earlier failed copy while a later one failed, or from the sent delivery a failed resend
    copied, delivers it; the mark must not stay."""
    store = Store(store_url)
    upgrade(store)
    try:
        with store.begin() as conn:
            _, delivery = _results_with_failure_email(conn, "v")
        first = _settle(store, "failed", "550 no such mailbox", **delivery)
        second = _settle(store, "failed", "550 again", **delivery, resent_from=first)
        third = _settle(store, "failed", "550 still", **delivery, resent_from=second)
        assert [m["delivery_id"] for m in list_jobs(store)[0]["undelivered"]] == [third]
        _settle(store, "sent", **delivery, resent_from=second)
        assert list_jobs(store)[0]["undelivered"] == [], "the failure email was sent"

        sent = _settle(store, "sent", **delivery)
        copy = _settle(store, "failed", "550 once more", **delivery, resent_from=sent)
        assert [m["delivery_id"] for m in list_jobs(store)[0]["undelivered"]] == [copy]
        _settle(store, "sent", **delivery, resent_from=sent)
        assert list_jobs(store)[0]["undelivered"] == [], "sent again from the sent delivery"
    finally:
        store.dispose()


def test_support_closes_a_finished_job_whose_email_cannot_be_delivered(
    tmp_path, store_url, capsys, monkeypatch
):
    """A failure email the practice's mail server refuses for good leaves a finished job
    naming it for ever; and a summary email that fails makes a completed job
    ``failed_outputs``. Support closes both, and the job says what kept it open."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    try:
        with store.begin() as conn:
            _, failure_email = _results_with_failure_email(conn, "v")
            _, summary = _results_with_failure_email(conn, "s")
            conn.execute(update(jobs).where(jobs.c.job_id == "s").values(status="completed"))
        email = _settle(store, "failed", "550 5.1.1 no such mailbox", **failure_email)
        _settle(
            store,
            "failed",
            "550 5.1.1 no such mailbox",
            **summary | {"destination": "summary-email"},
        )
        assert {j["job_id"]: j["status"] for j in list_jobs(store)}["s"] == "failed_outputs"
        cli = _cli(tmp_path, store_url)
        capsys.readouterr()
        for job_id, why in (("v", "told by phone"), ("s", "PCSE told")):
            assert main([*cli, "jobs", "close", job_id, "--reason", why, "--actor", "sam"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "job v closed (was failed_dps_validation)",
            "job s closed (was failed_outputs)",
        ]
        found = {j["job_id"]: j for j in list_jobs(store)}
        assert (found["v"]["status"], found["v"]["closed_from"]) == (
            "closed",
            "failed_dps_validation",
        )
        with store.read() as conn:
            details = conn.scalar(
                select(audit_events.c.details).where(audit_events.c.target == "job:v")
            )
        assert json.loads(details)["undelivered"] == found["v"]["undelivered"]
        assert main([*cli, "jobs"]) == 0
        (line,) = [r for r in capsys.readouterr().out.splitlines() if r.startswith("v ")]
        assert "closed by sam (was failed_dps_validation): told by phone" in line
        assert f"failure-email #{email}" in line, "what kept it open"
    finally:
        store.dispose()


def _message(conn: Connection, uuid: str, channel: str) -> int:
    """A processed message of the job ``uuid`` names."""
    message = messages.insert().values(
        uuid=uuid,
        channel=channel,
        received_at=utcnow(),
        status="processed",
        content_type="text/plain",
        size=1,
        raw=b"x",
    )
    message_id = conn.execute(message).inserted_primary_key[0]
    conn.execute(correlations.insert().values(message_id=message_id, key="dps_job", value=uuid))
    return message_id


def _overdue_gauge(collector: QueueCollector) -> float:
    (family,) = [f for f in collector.collect() if f.name == "tie_dps_jobs_overdue"]
    return family.samples[0].value


def test_a_job_dps_never_answers_is_overdue_in_jobs_and_the_gauge(
    tmp_path, store_url, capsys, monkeypatch
):
    """Nothing else moves a job ``sent_to_dps``: once DPS's answer is later than
    ``dps.overdue_after`` the job says so, and the gauge counts it for an alert."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    hours_ago = {"late": 25, "waiting": 23, "answered": 30}
    try:
        with store.begin() as conn:
            for job_id, hours in hours_ago.items():
                status = "completed" if job_id == "answered" else "sent_to_dps"
                then = utcnow() - timedelta(hours=hours)
                conn.execute(
                    jobs.insert().values(
                        job_id=job_id, status=status, received_at=then, updated_at=then
                    )
                )
        found = {j["job_id"]: j["overdue"] for j in list_jobs(store)}
        assert found == {"late": True, "waiting": False, "answered": False}, "default 24h"
        assert _overdue_gauge(QueueCollector(store)) == 1
        assert _overdue_gauge(QueueCollector(store, 22 * 3600)) == 2
        with store.begin() as conn:
            intake = _message(conn, "waiting", "gp-extract-intake")
        dps = {"message_id": intake, "channel": "gp-extract-intake", "destination": "dps"}
        dps |= {"content_type": "text/plain", "payload": b"x", "next_attempt_at": utcnow()}
        dps |= {"created_at": utcnow(), "updated_at": utcnow()}
        first = _settle(store, "sent", **dps)
        _settle(store, "sent", **dps, resent_from=first)
        assert _overdue_gauge(QueueCollector(store, 22 * 3600)) == 1, "the file resent: wait anew"
    finally:
        store.dispose()
    cli = _cli(tmp_path, store_url)
    config = tmp_path / "engine.yaml"
    config.write_text(config.read_text() + "dps: {overdue_after: 2d}\n")
    capsys.readouterr()
    assert main([*cli, "jobs", "--json"]) == 0
    assert not any(j["overdue"] for j in json.loads(capsys.readouterr().out)), "2d configured"
    config.write_text(config.read_text().replace("2d", "12h"))
    assert main([*cli, "jobs"]) == 0
    lines = {r.split()[0]: r for r in capsys.readouterr().out.splitlines()[1:]}
    assert "overdue: no answer from DPS since " in lines["late"]
    assert "overdue" not in lines["waiting"] and "overdue" not in lines["answered"]


def test_a_failed_file_resent_to_dps_waits_for_its_answer_again_and_can_be_overdue(
    tmp_path, store_url, capsys, monkeypatch
):
    """The file to DPS failed for good (``failed_delivery``), an operator resent it, and the
    resend was sent: DPS's answer is awaited again, counted from that send, so a DPS that
    never answers makes the job overdue instead of leaving it stuck as a failed delivery."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    then = utcnow() - timedelta(hours=30)
    try:
        with store.begin() as conn:
            conn.execute(
                jobs.insert().values(
                    job_id="lost", status="sent_to_dps", received_at=then, updated_at=then
                )
            )
            intake = _message(conn, "lost", "gp-extract-intake")
        dps = {"message_id": intake, "channel": "gp-extract-intake", "destination": "dps"}
        dps |= {"content_type": "text/plain", "payload": b"x", "next_attempt_at": then}
        dps |= {"created_at": then, "updated_at": then}
        failed = _settle(store, "failed", "MESH refused (code 12)", **dps)
        assert list_jobs(store)[0]["status"] == "failed_delivery"

        (result,) = resend_many(store, [failed], reason="MESH fixed", actor="sam")
        before = utcnow()
        with store.begin() as conn:
            copy = int(str(result.copy))
            conn.execute(update(deliveries).where(deliveries.c.id == copy).values(status="sent"))
            settled(conn, [copy], {("gp-extract-intake", "job")})
        (job,) = list_jobs(store)
        assert (job["status"], job["error"], job["overdue"]) == ("sent_to_dps", None, False)
        assert job["updated_at"] >= before, "the wait counts from the resend"
        with store.read() as conn:
            assert count_overdue(conn, before + timedelta(hours=23), 24 * 3600) == 0
            assert count_overdue(conn, before + timedelta(hours=25), 24 * 3600) == 1
            resent = select(audit_events.c.details).where(
                audit_events.c.action == "resend", audit_events.c.target == "urn:tie:message:lost"
            )
            (details,) = conn.scalars(resent)
        assert json.loads(details)["new_delivery"] == copy
    finally:
        store.dispose()
    cli = _cli(tmp_path, store_url)
    capsys.readouterr()
    assert main([*cli, "jobs"]) == 0
    (line,) = capsys.readouterr().out.splitlines()[1:]
    assert "sent_to_dps" in line and "delivery to dps failed" not in line


def test_a_failed_file_resent_to_dps_that_fails_again_shows_the_latest_failure(
    tmp_path, store_url, capsys, monkeypatch
):
    """The job says why its file is not with DPS now: after a resend fails too, its error is
    the resend's (what support has to fix next), as its ``undelivered`` entry is."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    store = Store(store_url)
    upgrade(store)
    now = utcnow()
    try:
        with store.begin() as conn:
            conn.execute(
                jobs.insert().values(
                    job_id="j", status="sent_to_dps", received_at=now, updated_at=now
                )
            )
            intake = _message(conn, "j", "gp-extract-intake")
        dps = {"message_id": intake, "channel": "gp-extract-intake", "destination": "dps"}
        dps |= {"content_type": "text/plain", "payload": b"x", "next_attempt_at": now}
        dps |= {"created_at": now, "updated_at": now}
        first = _settle(store, "failed", "MESH refused (code 12)", **dps)
        again = _settle(store, "failed", "MESH refused (code 14)", **dps, resent_from=first)
        (job,) = list_jobs(store)
        assert job["status"] == "failed_delivery"
        assert job["error"] == "delivery to dps failed: MESH refused (code 14)"
        assert [m["delivery_id"] for m in job["undelivered"]] == [again]
    finally:
        store.dispose()
    cli = _cli(tmp_path, store_url)
    capsys.readouterr()
    assert main([*cli, "jobs"]) == 0
    (line,) = capsys.readouterr().out.splitlines()[1:]
    assert "code 14" in line and "code 12" not in line


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_a_batch_of_results_and_a_round_of_settled_deliveries_lock_jobs_in_one_order(store_url):
    """The processor applies a batch's job records in one transaction, the dispatcher settles
    a round of deliveries in another: both lock the jobs they touch. In two orders (the
    batch's messages', and the jobs') each could hold a job the other waits for."""
    store = Store(store_url)
    upgrade(store)
    now = utcnow()
    local = {"dps-results": {"job": Local(apply, lock_key)}}
    try:
        with store.begin() as conn:
            files = {}
            for job_id in ("a", "b"):
                conn.execute(
                    jobs.insert().values(job_id=job_id, status="sent_to_dps", updated_at=now)
                )
                intake = _message(conn, job_id, "gp-extract-intake")
                files[job_id] = conn.execute(
                    deliveries.insert().values(
                        message_id=intake,
                        channel="gp-extract-intake",
                        destination="dps",
                        status="sending",
                        content_type="text/plain",
                        payload=b"x",
                        next_attempt_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]
            batch = []
            for job_id in ("b", "a"):  # the batch's order is its messages': b's results first
                row = conn.execute(
                    messages.insert().values(
                        uuid=f"results-of-{job_id}",
                        channel="dps-results",
                        received_at=now,
                        status="received",
                        content_type="application/x-ndjson",
                        size=1,
                        raw=b"x",
                    )
                ).inserted_primary_key[0]
                record = job_record(job_id, "completed", statistics={"patients": 1})
                planned = PlannedDelivery("job", record, "application/json")
                outcome = Outcome("processed", deliveries=[planned])
                outcome.correlations = [("dps_job", job_id)]
                batch.append((SimpleNamespace(id=row, channel="dps-results"), outcome))

        backend: list[int] = []

        def process(conn: Connection) -> None:
            backend.append(conn.scalar(text("SELECT pg_backend_pid()")))
            write_outcomes(conn, batch, None, local)

        def batch_waits() -> bool:
            """The batch's transaction waits for a lock (another's), or is done."""
            if not worker.is_alive():
                return True
            with store.read() as conn:
                query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"
                return bool(backend) and conn.scalar(text(query), {"pid": backend[0]}) == "Lock"

        with store.begin() as conn:
            # The round's lock of jobs a and b, in their order, has taken a when the batch
            # has taken b.
            conn.execute(select(jobs.c.job_id).where(jobs.c.job_id == "a").with_for_update())
            batch_failed: list[BaseException] = []
            worker = threading.Thread(
                target=lambda: _catching(batch_failed, lambda: store.run(process))
            )
            worker.start()
            wait_until(batch_waits)
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(files.values()))
                .values(status="failed", last_error="MESH refused")
            )
            settled(conn, list(files.values()), {("gp-extract-intake", "job")})
        worker.join()
        assert batch_failed == []
        assert {j["job_id"]: j["status"] for j in list_jobs(store)} == {
            "a": "completed",
            "b": "completed",
        }, "the file reached DPS after all: its results finish the job"
    finally:
        store.dispose()


def _catching(failures: list[BaseException], work: Callable[[], object]) -> None:
    try:
        work()
    except Exception as exc:
        failures.append(exc)
