"""The JSON API's operations over a real socket, with python-hl7 as the lab: channel figures,
search with cursor pagination, resend and reprocess (single, bulk, dry run, reason), the
audit log and its verification (caught tampering), and the Prometheus exposition."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from console_testing import Site, order, running_site
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, func, select, update
from tie_testing import api_token, wait_until

from router.api.idempotency import UNANSWERED_AFTER, request_hash
from router.api.messages import BulkResendIn
from router.store.idempotency import claim
from router.store.inbound import utcnow
from router.store.schema import audit_events, idempotency_keys, messages

OML = "OML_O21_nhs_nwgmsa_v251"
CHANNEL = "lab-orders"


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, {}) as running:
        yield running


def _client(site: Site, *roles: str, name: str) -> httpx.Client:
    token = api_token(site.running.store, *roles, name=name)
    return httpx.Client(base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"})


def test_channels_search_resend_and_reprocess(site, hl7_samples):
    site.lab.code = "AR"
    for n in range(3):
        site.send_and_settle(order(hl7_samples[OML], f"API-{n}"), f"API-{n}", "failed")
    support = _client(site, "support", name="sam")
    viewer = _client(site, "viewer", name="vic")

    (row,) = viewer.get("/api/channels").json()
    assert (row["channel"], row["paused"], row["failed"], row["queued"]) == (CHANNEL, False, 3, 0)
    assert row["counts"]["received"] == {"last_hour": 3, "last_24h": 3}
    assert row["counts"]["failed"]["last_24h"] == 3
    assert row["oldest_queued_age"] is None
    assert row["last_error"]["text"].startswith("lab: ")

    first = viewer.get("/api/messages", params={"channel": CHANNEL, "limit": 2}).json()
    assert [m["control_id"] for m in first["messages"]] == ["API-2", "API-1"]
    rest = viewer.get("/api/messages", params={"channel": CHANNEL, "before": first["next"]})
    assert [m["control_id"] for m in rest.json()["messages"]] == ["API-0"]
    assert viewer.get("/api/messages", params={"status": "bogus"}).status_code == 422
    assert viewer.get(f"/api/messages/{first['messages'][0]['id']}").status_code == 403

    search = {"search": {"channel": CHANNEL, "control_id": "API-1"}}
    assert support.post("/api/deliveries/resend", json=search).status_code == 422
    assert support.post("/api/deliveries/resend", json={"reason": "x"}).status_code == 422
    dry = support.post("/api/deliveries/resend", json={**search, "reason": "lab", "dry_run": True})
    assert dry.json()["dry_run"] is True and dry.json()["count"] == 1
    assert "resend delivery" in dry.json()["results"][0]["description"]
    assert site.delivery_status("API-1") == ["failed"], "a dry run changes nothing"

    site.lab.code = "AA"
    bulk = support.post(
        "/api/deliveries/resend", json={"search": {"channel": CHANNEL}, "reason": "lab fixed"}
    )
    assert bulk.status_code == 200 and bulk.json()["count"] == 3
    for n in range(3):
        wait_until(lambda n=n: site.delivery_status(f"API-{n}") == ["resent", "sent"])
    (row,) = viewer.get("/api/channels").json()
    assert (row["failed"], row["counts"]["failed"]["last_24h"], row["attention"]) == (0, 0, False)
    repeat = {"search": {"channel": CHANNEL}, "reason": "lab fixed"}
    assert support.post("/api/deliveries/resend", json=repeat).json()["count"] == 0
    again = support.post("/api/deliveries/resend", json={**repeat, "again": True, "dry_run": True})
    assert again.json()["count"] == 3
    assert "again: already resent as #" in again.json()["results"][0]["description"]

    original = int(bulk.json()["results"][0]["original"])
    single = support.post(f"/api/deliveries/{original}/resend", json={"reason": "once more"})
    assert single.json()["count"] == 1
    wait_until(lambda: site.delivery_status("API-0") == ["resent", "sent", "sent"])

    one = first["messages"][0]["id"]
    preview = support.post(f"/api/messages/{one}/reprocess", json={"reason": "x", "dry_run": True})
    assert preview.json()["count"] == 1 and preview.json()["results"][0]["copy"] is None
    again = support.post(f"/api/messages/{one}/reprocess", json={"reason": "mapping fixed"})
    copy = again.json()["results"][0]["copy"]
    with site.running.store.read() as conn:
        assert conn.scalar(select(messages.c.reprocessed_from).where(messages.c.uuid == copy)) == (
            one
        )
    assert support.post("/api/messages/999999/reprocess", json={"reason": "x"}).status_code == 404

    detail = support.get(f"/api/messages/{one}").json()
    assert detail["raw"].startswith("MSH|") and len(detail["deliveries"]) == 2
    assert detail["deliveries"][0]["resent_as"] == [detail["deliveries"][1]["id"]]

    events = support.get("/api/audit", params={"actor": "sam"}).json()["events"]
    actions = [e["action"] for e in events]
    assert actions == ["view", "reprocess"] + ["resend"] * 4
    assert [e["details"]["reason"] for e in events[2:]] == ["once more"] + ["lab fixed"] * 3
    prefixed = support.get("/api/audit", params={"actor": "sam", "action": "re*"}).json()
    assert [e["action"] for e in prefixed["events"]] == actions[1:], "a prefix, not a name"
    assert viewer.get("/api/audit").status_code == 403


@pytest.mark.parametrize("tamper", ["edit", "delete"])
def test_audit_verify_over_the_api_names_the_first_broken_event(site, tamper):
    admin = _client(site, "admin", name="ada")
    for name in ("u1", "u2", "u3"):
        assert admin.post("/api/users", json={"name": name, "roles": ["viewer"]}).status_code == 201
    assert admin.get("/api/audit/verify").json()["ok"] is True
    a = audit_events.c
    with site.running.store.begin() as conn:
        ids = list(conn.scalars(select(a.id).where(a.action == "user-add").order_by(a.id)))
        middle = ids[-2]
        if tamper == "edit":
            conn.execute(update(audit_events).where(a.id == middle).values(details="{}"))
        else:
            conn.execute(delete(audit_events).where(a.id == middle))
    verdict = admin.get("/api/audit/verify").json()
    assert verdict["ok"] is False
    assert verdict["broken_id"] == (middle if tamper == "edit" else ids[-1])


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_need_a_token_and_count_per_channel_and_destination(site, hl7_samples):
    assert httpx.get(f"{site.url}/metrics").status_code == 401
    scraper = _client(site, "viewer", name="prometheus")
    received = ("tie_messages_total", (("channel", CHANNEL), ("status", "received")))
    sent = (
        "tie_deliveries_total",
        (("channel", CHANNEL), ("destination", "lab"), ("status", "sent")),
    )
    latency = ("tie_ack_latency_seconds_count", (("channel", CHANNEL), ("transport", "mllp")))
    stored = ("tie_group_commit_messages_sum", ())
    before = _samples(scraper.get("/metrics").text)

    site.send_and_settle(order(hl7_samples[OML], "MET-1"), "MET-1", "sent")
    site.lab.code = "AE"
    site.send(order(hl7_samples[OML], "MET-2"))
    wait_until(lambda: site.delivery_status("MET-2") == ["retrying"])

    answer = scraper.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain")
    after = _samples(answer.text)
    assert after[received] - before.get(received, 0) == 2
    assert after[sent] - before.get(sent, 0) == 1
    assert after[latency] - before.get(latency, 0) == 2
    assert after[stored] - before.get(stored, 0) == 2
    assert after[("tie_group_commit_seconds_count", ())] >= 2
    queue = (("channel", CHANNEL), ("destination", "lab"))
    assert after[("tie_queue_depth", queue)] == 1
    assert after[("tie_queue_oldest_age_seconds", queue)] >= 0


def test_a_resend_over_the_api_wakes_the_dispatcher(tmp_path, store_url, hl7_samples):
    """The dispatcher polls only every ten minutes here: the resent copy goes out because
    the API woke it, as the console does."""
    slow_poll = {"poll_interval": "600s", "lease": "30s"}
    with running_site(tmp_path, store_url, {}, dispatch=slow_poll) as site:
        site.lab.code = "AR"
        site.send_and_settle(order(hl7_samples[OML], "WAKE-1"), "WAKE-1", "failed")
        site.lab.code = "AA"
        support = _client(site, "support", name="sam")
        search = {"search": {"channel": CHANNEL, "control_id": "WAKE-1"}, "reason": "lab back"}
        assert support.post("/api/deliveries/resend", json=search).json()["count"] == 1
        wait_until(lambda: site.delivery_status("WAKE-1") == ["resent", "sent"])


def test_a_bulk_resend_naming_an_unknown_delivery_resends_nothing(site, hl7_samples):
    """The answer is a 404, so nothing may have been resent: a caller who fixes the list
    and tries again must not send the known deliveries twice."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "SOME-1"), "SOME-1", "failed")
    support = _client(site, "support", name="sam")
    known = support.get("/api/messages", params={"control_id": "SOME-1"}).json()["messages"][0]
    [delivery] = support.get(f"/api/messages/{known['id']}").json()["deliveries"]
    body = {"ids": [delivery["id"], 999999], "reason": "lab back"}
    for dry_run in (True, False):
        answer = support.post("/api/deliveries/resend", json={**body, "dry_run": dry_run})
        assert (answer.status_code, answer.json()["detail"]) == (404, "no delivery 999999")
    assert site.delivery_status("SOME-1") == ["failed"]
    actions = [
        e["action"] for e in support.get("/api/audit", params={"actor": "sam"}).json()["events"]
    ]
    assert "resend" not in actions


def test_a_delivery_still_to_be_sent_is_not_resent_over_the_api(site, hl7_samples):
    """The dispatcher still sends a retrying delivery, so its resend would send it twice:
    409, and a bulk naming it resends nothing (not even the failed one beside it)."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "DONE-1"), "DONE-1", "failed")
    site.lab.code = "AE"
    site.send(order(hl7_samples[OML], "BUSY-1"))
    wait_until(lambda: site.delivery_status("BUSY-1") == ["retrying"])
    support = _client(site, "support", name="sam")

    def delivery_of(control_id: str) -> int:
        [found] = support.get("/api/messages", params={"control_id": control_id}).json()["messages"]
        [delivery] = support.get(f"/api/messages/{found['id']}").json()["deliveries"]
        return delivery["id"]

    failed, busy = delivery_of("DONE-1"), delivery_of("BUSY-1")
    refusal = rf"delivery {busy} is (retrying|sending): it will still be sent, so a resend would"

    single = support.post(f"/api/deliveries/{busy}/resend", json={"reason": "lab back"})
    assert single.status_code == 409 and re.match(refusal, single.json()["detail"])
    bulk = support.post("/api/deliveries/resend", json={"ids": [failed, busy], "reason": "x"})
    assert bulk.status_code == 409 and re.match(refusal, bulk.json()["detail"])
    dry = support.post(
        "/api/deliveries/resend", json={"ids": [failed, busy], "reason": "x", "dry_run": True}
    )
    assert dry.status_code == 200
    plans = [r["description"] for r in dry.json()["results"]]
    assert plans[0].startswith(f"resend delivery {failed} (failed)")
    assert plans[1].startswith(f"not resend delivery {busy} (")
    by_status = {"search": {"channel": CHANNEL}, "delivery_status": "retrying", "reason": "x"}
    assert support.post("/api/deliveries/resend", json=by_status).status_code == 422

    assert site.delivery_status("DONE-1") == ["failed"]
    assert len(site.delivery_status("BUSY-1")) == 1
    actions = [
        e["action"] for e in support.get("/api/audit", params={"actor": "sam"}).json()["events"]
    ]
    assert "resend" not in actions


def test_a_replay_retried_with_its_idempotency_key_is_answered_not_replayed_again(
    site, hl7_samples
):
    """A client that sends a bulk replay again (its answer was lost) resends nothing twice:
    the same key and body get the first answer; another body with that key is refused;
    keys are the caller's own."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "IDEM-1"), "IDEM-1", "failed")
    site.lab.code = "AA"
    support = _client(site, "support", name="sam")
    other = _client(site, "support", name="sue")
    [found] = support.get("/api/messages", params={"control_id": "IDEM-1"}).json()["messages"]
    [delivery] = support.get(f"/api/messages/{found['id']}").json()["deliveries"]
    resend = {"ids": [delivery["id"]], "reason": "lab back"}
    key = {"Idempotency-Key": "INC-9/resend-1"}
    as_json = {"Content-Type": "application/json"}

    first = support.post("/api/deliveries/resend", json=resend, headers=key)
    assert (first.status_code, first.json()["count"]) == (200, 1)
    assert "idempotent-replayed" not in first.headers
    wait_until(lambda: site.delivery_status("IDEM-1") == ["resent", "sent"])
    respaced = json.dumps(resend, indent=2)  # the same request, however it is spaced
    for retry in (
        support.post("/api/deliveries/resend", json=resend, headers=key),
        support.post("/api/deliveries/resend", content=respaced, headers={**key, **as_json}),
    ):
        assert (retry.status_code, retry.json()) == (200, first.json())
        assert retry.headers["idempotent-replayed"] == "true"
    assert site.delivery_status("IDEM-1") == ["resent", "sent"], "nothing resent twice"

    changed = support.post(
        "/api/deliveries/resend", json={**resend, "reason": "another"}, headers=key
    )
    assert changed.status_code == 422
    assert changed.json()["detail"].startswith("Idempotency-Key 'INC-9/resend-1' was used at ")
    elsewhere = support.post("/api/messages/reprocess", json=resend, headers=key)
    assert elsewhere.status_code == 422, "a key names one request, on one route"
    assert site.delivery_status("IDEM-1") == ["resent", "sent"]

    # Another caller's key is its own: sue's request with sam's key is a request of hers.
    theirs = other.post("/api/deliveries/resend", json={**resend, "again": True}, headers=key)
    assert (theirs.status_code, theirs.json()["count"]) == (200, 1)
    assert "idempotent-replayed" not in theirs.headers

    # A refused request keeps no answer: its retry, once the cause is fixed, runs.
    reprocess = {"ids": [found["id"], "urn:tie:message:no-such"], "reason": "remap"}
    again = {"Idempotency-Key": "INC-9/reprocess"}
    assert support.post("/api/messages/reprocess", json=reprocess, headers=again).status_code == 404
    reprocess["ids"] = [found["id"]]
    done = support.post("/api/messages/reprocess", json=reprocess, headers=again)
    assert (done.status_code, done.json()["count"]) == (200, 1)
    repeat = support.post("/api/messages/reprocess", json=reprocess, headers=again)
    assert repeat.json() == done.json() and repeat.headers["idempotent-replayed"] == "true"
    with site.running.store.read() as conn:
        copies = conn.scalar(
            select(func.count()).select_from(messages).where(messages.c.control_id == "IDEM-1")
        )
    assert copies == 2, "the message and one reprocessed copy"

    # A replay of one delivery too; its path is part of the request.
    single, once = f"/api/deliveries/{delivery['id']}/resend", {"Idempotency-Key": "INC-9/one"}
    made = support.post(single, json={"reason": "once"}, headers=once)
    assert made.json() == support.post(single, json={"reason": "once"}, headers=once).json()
    elsewhere = support.post("/api/deliveries/999/resend", json={"reason": "once"}, headers=once)
    assert elsewhere.status_code == 422

    # A claim left without an answer (the engine stopped mid-way) is not retried under its
    # key: it says so once it is too old to be running still.
    unanswered = {"Idempotency-Key": "INC-9/cut-short"}
    digest = request_hash("/api/deliveries/resend", BulkResendIn.model_validate(resend))
    for began, said in (
        (utcnow(), "is still being answered"),
        (utcnow() - UNANSWERED_AFTER, "most likely stopped"),
    ):
        site.running.store.run(
            lambda conn, began=began: (
                conn.execute(delete(idempotency_keys)),
                claim(conn, "sam", "INC-9/cut-short", "/api/deliveries/resend", digest, began),
            )
        )
        cut = support.post("/api/deliveries/resend", json=resend, headers=unanswered)
        assert cut.status_code == 409 and said in cut.json()["detail"]

    for bad in ("", "x" * 256, "a key"):
        answer = support.post(
            "/api/deliveries/resend", json=resend, headers={"Idempotency-Key": bad}
        )
        assert answer.status_code == 422, bad
    events = support.get("/api/audit", params={"actor": "sam"}).json()["events"]
    repeats = [(e["action"], e["target"]) for e in events if e["action"].endswith(".repeat")]
    assert repeats == [
        ("resend.repeat", "/api/deliveries/{id}/resend"),
        ("reprocess.repeat", "/api/messages/reprocess"),
        ("resend.repeat", "/api/deliveries/resend"),
        ("resend.repeat", "/api/deliveries/resend"),
    ]
    # Each first request's replay events carry its key, as its retries' repeats do: the
    # audit log tells a request from its retry.
    keyed = {(e["action"], e["details"].get("idempotency_key")) for e in events}
    assert {(a, k) for a, k in keyed if a in ("resend", "reprocess")} == {
        ("resend", "INC-9/resend-1"),
        ("reprocess", "INC-9/reprocess"),
        ("resend", "INC-9/one"),
    }
    assert {k for a, k in keyed if a.endswith(".repeat")} == {
        "INC-9/resend-1",
        "INC-9/reprocess",
        "INC-9/one",
    }
