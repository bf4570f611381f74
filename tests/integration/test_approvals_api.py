"""``/api/revisions``, ``/api/holds`` and ``/api/channels/reload`` over a real socket, with
tokens of different users: the four-eyes rules hold through the API as in the services."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import httpx
import pytest
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import (
    Hl7Receiver,
    RunningEngine,
    api_token,
    engine_config,
    hl7_message,
    wait_until,
)

from router.store.schema import deliveries

OML = "OML_O21_nhs_nwgmsa_v251"


def orders(lab_port: int, kind: str = "OML", hold: bool = False) -> str:
    return (
        "name: orders\nsource:\n  mllp: {host: 127.0.0.1, port: 0}\n"
        f"filter:\n  - field: MSH-9.1\n    equals: {kind}\n"
        f"destinations:\n  lab:\n    mllp: {{host: 127.0.0.1, port: {lab_port}}}\n"
        + ("    hold: {approvals: 2}\n" if hold else "")
    )


@pytest.fixture
def governed(tmp_path, store_url) -> Iterator[tuple[RunningEngine, dict, Hl7Receiver]]:
    lab = Hl7Receiver()
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    (config.channels / "orders.yaml").write_text(orders(lab.port, hold=True))
    tokens = {
        "erin": api_token(store_url, "engineer", "approver", name="erin"),
        "ada": api_token(store_url, "approver", name="ada"),
        "bob": api_token(store_url, "approver", name="bob"),
        "sam": api_token(store_url, "support", name="sam"),
        "val": api_token(store_url, "viewer", name="val"),
    }
    running = RunningEngine(config, None, http=True)  # type: ignore[arg-type]
    client = httpx.Client(base_url=f"http://127.0.0.1:{running.http_port}", timeout=10)

    def as_user(name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[name]}"}

    try:
        yield running, {"client": client, "as": as_user, "config": config}, lab
    finally:
        client.close()
        running.stop()
        lab.stop()


def test_revision_four_eyes_through_the_api(governed):
    running, api, lab = governed
    client, as_user = api["client"], api["as"]
    proposal = {"channel": "orders", "yaml": orders(lab.port, "ORU", hold=True), "reason": "r"}
    assert client.post("/api/revisions", json=proposal, headers=as_user("val")).status_code == 403
    created = client.post("/api/revisions", json=proposal, headers=as_user("erin"))
    assert created.status_code == 201 and created.json()["number"] == 2
    diff = client.get("/api/revisions/orders/diff", headers=as_user("val")).json()
    assert "+    equals: ORU" in diff["text"]

    own = client.post("/api/revisions/orders/2/approve", headers=as_user("erin"))
    assert own.status_code == 403 and "cannot approve" in own.json()["detail"]
    assert client.post("/api/revisions/orders/2/approve", headers=as_user("sam")).status_code == 403
    approved = client.post("/api/revisions/orders/2/approve", headers=as_user("ada"))
    assert approved.status_code == 200
    wait_until(
        lambda: (
            client.get("/api/revisions/orders/2", headers=as_user("val")).json()["state"]
            == "deployed"
        )
    )
    assert running.engine.channels["orders"].config.filter[0].equals == "ORU"
    bad = client.post(
        "/api/revisions",
        json={"channel": "orders", "yaml": "name: orders\n"},
        headers=as_user("erin"),
    )
    assert bad.status_code == 422

    (api["config"].channels / "orders.yaml").write_text(orders(lab.port, "ADT", hold=True))
    reloaded = client.post("/api/channels/reload", headers=as_user("erin")).json()
    assert reloaded["proposed"] == ["orders#3"]
    assert running.engine.channels["orders"].config.filter[0].equals == "ORU"


def test_an_approval_of_a_revision_that_no_longer_compiles_is_refused(governed, monkeypatch):
    _, api, lab = governed
    client, as_user, config = api["client"], api["as"], api["config"]
    (config.mappings / "tidy.py").write_text("def f(message):\n    return message\n")
    text = orders(lab.port, hold=True).replace("filter:", "transform: tidy:f\nfilter:")
    proposal = {"channel": "orders", "yaml": text}
    assert client.post("/api/revisions", json=proposal, headers=as_user("erin")).status_code == 201
    (config.mappings / "tidy.py").unlink()
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy")  # as a fresh process would see it
    refused = client.post("/api/revisions/orders/2/approve", headers=as_user("ada"))
    assert refused.status_code == 422
    assert "tidy" in refused.json()["detail"]["message"]
    revision = client.get("/api/revisions/orders/2", headers=as_user("val")).json()
    assert revision["state"] == "proposed"


def test_held_batch_release_through_the_api(governed, hl7_samples):
    running, api, lab = governed
    client, as_user = api["client"], api["as"]
    for i in range(2):
        with MLLPClient("127.0.0.1", running.port("orders")) as mllp:
            mllp.send_message(hl7_message(hl7_samples[OML], f"H-{i}"))

    def held() -> bool:
        with running.store.read() as conn:
            return list(conn.scalars(select(deliveries.c.status))) == ["held", "held"]

    wait_until(held)
    [open_batch] = client.get("/api/holds", headers=as_user("val")).json()
    assert (open_batch["state"], open_batch["deliveries"]) == ("open", 2)
    target = {"channel": "orders", "destination": "lab"}
    assert client.post("/api/holds", json=target, headers=as_user("val")).status_code == 403
    batch = client.post("/api/holds", json=target, headers=as_user("sam")).json()
    summary = client.get(f"/api/holds/{batch['id']}", headers=as_user("val")).json()
    assert summary["by_destination"] == {"lab": 2}

    first = client.post(f"/api/holds/{batch['id']}/approve", headers=as_user("ada")).json()
    assert first["state"] == "pending"
    again = client.post(f"/api/holds/{batch['id']}/approve", headers=as_user("ada"))
    assert again.status_code == 403
    second = client.post(f"/api/holds/{batch['id']}/approve", headers=as_user("bob")).json()
    assert second["state"] == "released"
    wait_until(lambda: sorted(lab.control_ids()) == ["H-0", "H-1"])


def test_a_rejection_without_a_reason_is_a_validation_error(governed, hl7_samples):
    """A missing reason is an incomplete request (422), not a wrong state (409)."""
    running, api, lab = governed
    client, as_user = api["client"], api["as"]
    proposal = {"channel": "orders", "yaml": orders(lab.port, "ORU", hold=True)}
    assert client.post("/api/revisions", json=proposal, headers=as_user("erin")).status_code == 201
    for body in ({}, {"reason": "  "}):
        refused = client.post("/api/revisions/orders/2/reject", json=body, headers=as_user("ada"))
        assert refused.status_code == 422
        assert refused.json()["detail"] == "a rejection needs a reason, and none was given"
    assert client.get("/api/revisions/orders/2", headers=as_user("val")).json()["state"] == (
        "proposed"
    )

    with MLLPClient("127.0.0.1", running.port("orders")) as mllp:
        mllp.send_message(hl7_message(hl7_samples[OML], "R-1"))
    wait_until(lambda: client.get("/api/holds", headers=as_user("val")).json())
    target = {"channel": "orders", "destination": "lab"}
    batch = client.post("/api/holds", json=target, headers=as_user("sam")).json()
    refused = client.post(f"/api/holds/{batch['id']}/reject", json={}, headers=as_user("ada"))
    assert refused.status_code == 422
    assert "needs a reason" in refused.json()["detail"]
    assert (
        client.get(f"/api/holds/{batch['id']}", headers=as_user("val")).json()["batch"]["state"]
        == "pending"
    )


def test_an_unknown_state_is_refused_not_an_empty_list(governed):
    """A typo (``propsed``) would otherwise read as "nothing waiting for approval"."""
    _, api, _ = governed
    client, as_user = api["client"], api["as"]
    for path in ("/api/revisions?state=propsed", "/api/holds?state=pendng"):
        answer = client.get(path, headers=as_user("val"))
        assert answer.status_code == 422, path
    assert client.get("/api/revisions?state=deployed", headers=as_user("val")).status_code == 200
    assert client.get("/api/holds?state=pending", headers=as_user("val")).status_code == 200


def test_concurrent_proposals_through_the_api_all_answer_201(governed):
    """Two engineers (or the API and the CLI) proposing for one channel at once: on PostgreSQL
    all but one took the same number and answered 500."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    running, api, lab = governed
    kinds = ["ORU", "ADT", "ORM", "SIU"]
    barrier = Barrier(len(kinds))
    url = f"http://127.0.0.1:{running.http_port}"

    def propose(kind: str) -> int:
        body = {"channel": "orders", "yaml": orders(lab.port, kind, hold=True), "reason": kind}
        with httpx.Client(base_url=url, timeout=30, headers=api["as"]("erin")) as client:
            barrier.wait()
            return client.post("/api/revisions", json=body).status_code

    with ThreadPoolExecutor(len(kinds)) as pool:
        assert list(pool.map(propose, kinds)) == [201] * len(kinds)
    found = api["client"].get("/api/revisions", headers=api["as"]("val")).json()
    assert sorted(r["number"] for r in found) == [1, 2, 3, 4, 5]
    assert sorted(r["state"] for r in found) == ["deployed", "proposed"] + ["superseded"] * 3


def test_a_role_change_does_not_let_anyone_approve_their_own_change(governed, hl7_samples):
    """The proposer made approver (even admin) by a role change is still the author, and the
    one who asked for a release is still its requester: another person must approve."""
    running, api, lab = governed
    client, as_user = api["client"], api["as"]
    root = {"Authorization": f"Bearer {api_token(running.store, 'admin', name='root')}"}
    eve = {"Authorization": f"Bearer {api_token(running.store, 'engineer', name='eve')}"}
    proposal = {"channel": "orders", "yaml": orders(lab.port, "ORU", hold=True), "reason": "r"}
    assert client.post("/api/revisions", json=proposal, headers=eve).status_code == 201

    for role in ("approver", "admin"):
        grant = {"add": [role, "support"], "reason": "covering the rota"}
        assert client.post("/api/users/eve/roles", json=grant, headers=root).status_code == 200
        issued = client.post(
            "/api/users/eve/tokens", json={"roles": [role, "support"]}, headers=root
        )
        own = {"Authorization": f"Bearer {issued.json()['token']}"}
        refused = client.post("/api/revisions/orders/2/approve", headers=own)
        assert refused.status_code == 403 and "cannot approve" in refused.json()["detail"]
    assert client.get("/api/revisions/orders/2", headers=as_user("val")).json()["state"] == (
        "proposed"
    )

    with MLLPClient("127.0.0.1", running.port("orders")) as mllp:
        mllp.send_message(hl7_message(hl7_samples[OML], "E-1"))
    wait_until(lambda: client.get("/api/holds", headers=as_user("val")).json())
    target = {"channel": "orders", "destination": "lab"}
    batch = client.post("/api/holds", json=target, headers=own).json()
    mine = client.post(f"/api/holds/{batch['id']}/approve", headers=own).json()
    assert mine["state"] == "pending" and "other than eve" in mine["waiting_for"]
    again = client.post(f"/api/holds/{batch['id']}/approve", headers=own)
    assert again.status_code == 403, "one person approves once"
