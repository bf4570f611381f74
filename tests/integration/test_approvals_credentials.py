"""Four eyes cannot be got round by acting as another user: an approval made with a
credential the author made (a token the author issued, a password the author set) is
refused with 403 and audited, over the API and in the console, on a running engine."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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

from router.auth.users import add_user
from router.store.schema import audit_events, deliveries

OML = "OML_O21_nhs_nwgmsa_v251"
ADMIN_PASSWORD = "the admin's own long password"
RESET = "a password the admin chose"
OWN = "bob's very own long password"


def orders(lab_port: int, kind: str = "OML") -> str:
    return (
        "name: orders\nsource:\n  mllp: {host: 127.0.0.1, port: 0}\n"
        f"filter:\n  - field: MSH-9.1\n    equals: {kind}\n"
        f"destinations:\n  lab:\n    mllp: {{host: 127.0.0.1, port: {lab_port}}}\n"
        "    hold: {approvals: 1}\n"
    )


class Site:
    def __init__(self, running: RunningEngine, lab: Hl7Receiver, tokens: dict[str, str]) -> None:
        self.running, self.lab, self.tokens = running, lab, tokens
        self.url = f"http://127.0.0.1:{running.http_port}"
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def as_user(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def propose(self, kind: str, author: str = "admin") -> int:
        body = {"channel": "orders", "yaml": orders(self.lab.port, kind)}
        answer = self.client.post("/api/revisions", json=body, headers=self.as_user(author))
        assert answer.status_code == 201, answer.text
        return answer.json()["number"]

    def issue(self, issuer: str, user: str, *roles: str) -> str:
        answer = self.client.post(
            f"/api/users/{user}/tokens", json={"roles": list(roles)}, headers=self.as_user(issuer)
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["token"]

    def state(self, number: int) -> str:
        answer = self.client.get(f"/api/revisions/orders/{number}", headers=self.as_user("admin"))
        return answer.json()["state"]

    def audited(self, action: str) -> list[Any]:
        with self.running.store.read() as conn:
            query = select(audit_events).where(audit_events.c.action == action)
            return list(conn.execute(query))


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    lab = Hl7Receiver()
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    (config.channels / "orders.yaml").write_text(orders(lab.port))
    tokens = {"admin": api_token(store_url, "admin", name="admin")}
    running = RunningEngine(config, None, http=True)  # type: ignore[arg-type]
    with running.store.begin() as conn:
        add_user(conn, "bob", ["approver"], None, actor="admin")
        add_user(conn, "carol", ["admin"], None, actor="admin")
    tokens["carol"] = api_token(running.store, "admin", name="carol")
    found = Site(running, lab, tokens)
    try:
        yield found
    finally:
        found.client.close()
        running.stop()
        lab.stop()


@contextmanager
def sign_in(url: str, name: str, password: str) -> Iterator[httpx.Client]:
    """A console session for ``name``, as a browser holds it."""
    with httpx.Client(base_url=url, timeout=10) as client:
        form = client.get("/login")
        answer = client.post(
            "/login", data={"username": name, "password": password, "csrf_token": csrf_of(form)}
        )
        assert answer.status_code == 303, answer.text
        yield client


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def console_approve(client: httpx.Client, number: int) -> httpx.Response:
    """The revision's Approve form sent from the approvals page, with its one-time nonce."""
    page = client.get("/approvals")
    action = f"/approvals/revisions/orders/{number}/approve"
    form = re.search(rf'<form method="post" action="{action}">.*?</form>', page.text, re.S)
    assert form, page.text
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', form.group(0)).group(1)
    return client.post(action, data={"csrf_token": csrf_of(page), "form_nonce": nonce})


def test_a_token_the_author_issued_cannot_approve_the_authors_revision(site):
    number = site.propose("ORU")
    site.tokens["bob"] = site.issue("admin", "bob", "approver")

    refused = site.client.post(
        f"/api/revisions/orders/{number}/approve", headers=site.as_user("bob")
    )
    assert refused.status_code == 403
    assert "credential admin made" in refused.json()["detail"]
    assert site.state(number) == "proposed"
    [event] = site.audited("revision.approve-refused")
    assert (event.actor, event.target) == ("bob", "channel:orders")
    assert json.loads(event.details)["credential_made_by"] == "admin"

    site.tokens["bob"] = site.issue("carol", "bob", "approver")  # a third person's token
    approved = site.client.post(
        f"/api/revisions/orders/{number}/approve", headers=site.as_user("bob")
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["approver"] == "bob"


def test_a_password_the_author_reset_cannot_approve_in_the_console(site):
    number = site.propose("ORU")
    reset = site.client.post(
        "/api/users/bob/password", json={"password": RESET}, headers=site.as_user("admin")
    )
    assert reset.status_code == 200, reset.text

    with sign_in(site.url, "bob", RESET) as bob:
        refused = console_approve(bob, number)
        assert refused.status_code == 403
        assert "credential admin made" in html.unescape(refused.text)
        assert site.state(number) == "proposed"
        assert [e.actor for e in site.audited("revision.approve-refused")] == ["bob"]

        changed = bob.post(
            "/api/me/password",
            json={"current_password": RESET, "new_password": OWN},
            headers={"X-CSRF-Token": csrf_of(bob.get("/approvals"))},
        )
        assert changed.status_code == 204, changed.text
        # Still the session the admin's password opened: whoever knew it may hold it.
        assert console_approve(bob, number).status_code == 403
    with sign_in(site.url, "bob", OWN) as bob:
        approved = console_approve(bob, number)
        assert approved.status_code == 303, approved.text
    assert site.state(number) in ("approved", "deployed")


def test_a_password_a_third_admin_set_approves_in_the_console(site):
    number = site.propose("ORU")
    with site.running.store.begin() as conn:
        add_user(conn, "dan", ["approver"], OWN, actor="carol")
    with sign_in(site.url, "dan", OWN) as dan:
        approved = console_approve(dan, number)
        assert approved.status_code == 303, approved.text
    assert site.state(number) in ("approved", "deployed")


def test_a_password_set_by_the_author_at_add_cannot_approve_over_the_api(site):
    number = site.propose("ORU")
    added = site.client.post(
        "/api/users",
        json={"name": "eve", "roles": ["approver"], "password": RESET},
        headers=site.as_user("admin"),
    )
    assert added.status_code == 201, added.text
    with sign_in(site.url, "eve", RESET) as eve:
        csrf = csrf_of(eve.get("/approvals"))
        refused = eve.post(
            f"/api/revisions/orders/{number}/approve", headers={"X-CSRF-Token": csrf}
        )
        assert refused.status_code == 403
        assert "credential admin made" in refused.json()["detail"]


def test_a_token_the_requester_issued_cannot_approve_the_release(site, hl7_samples):
    with MLLPClient("127.0.0.1", site.running.port("orders")) as mllp:
        mllp.send_message(hl7_message(hl7_samples[OML], "H-0"))

    def held() -> bool:
        with site.running.store.read() as conn:
            return list(conn.scalars(select(deliveries.c.status))) == ["held"]

    wait_until(held)
    target = {"channel": "orders", "destination": "lab"}
    batch = site.client.post("/api/holds", json=target, headers=site.as_user("carol")).json()
    site.tokens["bob"] = site.issue("carol", "bob", "approver")

    refused = site.client.post(f"/api/holds/{batch['id']}/approve", headers=site.as_user("bob"))
    assert refused.status_code == 403
    assert "asked for the release" in refused.json()["detail"]
    [event] = site.audited("hold.approve-refused")
    assert event.actor == "bob"
    summary = site.client.get(f"/api/holds/{batch['id']}", headers=site.as_user("admin")).json()[
        "batch"
    ]
    assert summary["approvers"] == [] and summary["state"] == "pending"

    site.tokens["bob"] = site.issue("admin", "bob", "approver")
    approved = site.client.post(f"/api/holds/{batch['id']}/approve", headers=site.as_user("bob"))
    assert approved.status_code == 200 and approved.json()["state"] == "released"
    wait_until(lambda: site.lab.control_ids() == ["H-0"])
