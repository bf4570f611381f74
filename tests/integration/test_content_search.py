"""A search of message content (``text``) tells what messages hold: it needs ``support``
and each one is a ``search`` audit event, through the API, the console and the CLI."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator

import httpx
import pytest
import yaml
from console_testing import Site, order, running_site, sign_in
from sqlalchemy import select
from tie_testing import api_token

from router.cli import main
from router.cli.commands import os_user
from router.store.schema import audit_events, messages

OML = "OML_O21_nhs_nwgmsa_v251"
NAME = "CHISLETT"  # in the sample's PID-5
SEARCHED = {"text_sha256": hashlib.sha256(NAME.encode()).hexdigest()}


@pytest.fixture
def site(tmp_path, store_url, hl7_samples) -> Iterator[Site]:
    with running_site(tmp_path, store_url, {"vic": ["viewer"], "sam": ["support"]}) as running:
        running.send_and_settle(order(hl7_samples[OML], "FIND-1"), "FIND-1", "sent")
        yield running


def _searches(site: Site) -> list[tuple[str, dict]]:
    a = audit_events.c
    with site.running.store.read() as conn:
        rows = conn.execute(
            select(a.actor, a.target, a.details).where(a.action == "search").order_by(a.id)
        )
        return [
            (actor, {**json.loads(details), "target": target}) for actor, target, details in rows
        ]


def _uuid(site: Site) -> str:
    with site.running.store.read() as conn:
        return conn.scalar(select(messages.c.uuid).where(messages.c.control_id == "FIND-1"))


def test_the_api_refuses_a_viewers_content_search_and_audits_supports(site):
    def client(role: str, name: str) -> httpx.Client:
        token = api_token(site.running.store, role, name=name)
        return httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {token}"})

    viewer, support = client("viewer", "vic"), client("support", "sam")
    refused = viewer.get("/api/messages", params={"text": NAME})
    assert refused.status_code == 403 and "support" in refused.json()["detail"]
    assert viewer.get("/api/messages", params={"control_id": "FIND-1"}).status_code == 200

    found = support.get("/api/messages", params={"text": NAME}).json()["messages"]
    assert [m["control_id"] for m in found] == ["FIND-1"]
    assert support.get("/api/messages", params={"text": "NOBODY"}).json()["messages"] == []
    expected = {**SEARCHED, "via": "api", "target": "messages"}
    assert _searches(site) == [
        ("sam", {**expected, "found": [_uuid(site)]}),
        ("sam", {**expected, "text_sha256": hashlib.sha256(b"NOBODY").hexdigest(), "found": []}),
    ]
    assert NAME not in json.dumps(_searches(site)), "the log does not spell out what was sought"


def test_the_console_ignores_a_viewers_content_search_and_audits_supports(site):
    viewer, support = sign_in(site.url, "vic"), sign_in(site.url, "sam")
    page = viewer.get("/messages", params={"text": "NOBODY"})
    assert page.status_code == 200
    assert 'name="text"' not in page.text, "no content search field for a viewer"
    assert "FIND-1" in page.text, "the text is ignored, not searched"
    assert 'name="text"' not in viewer.get("/messages").text
    assert _searches(site) == []

    page = support.get("/messages", params={"text": NAME})
    assert 'name="text"' in page.text
    assert re.findall(r'href="/messages/(\d+)"', page.text)
    more = support.get("/messages/rows", params={"text": NAME, "before": "1"})
    assert more.status_code == 200
    assert [(actor, d["via"], d["found"]) for actor, d in _searches(site)] == [
        ("sam", "console", [_uuid(site)]),
        ("sam", "console", []),
    ]


def test_the_cli_audits_a_content_search_too(site, tmp_path, store_url, capsys):
    config = tmp_path / "cli-engine.yaml"
    folders = {"channels": str(tmp_path / "channels"), "mappings": str(tmp_path / "mappings")}
    config.write_text(yaml.safe_dump({"store": store_url, **folders}))
    code = main(["--config", str(config), "messages", "--json", "--text", NAME, "--actor", "sam"])
    assert code == 0
    assert [m["control_id"] for m in json.loads(capsys.readouterr().out)] == ["FIND-1"]
    assert main(["--config", str(config), "messages", "--json", "--control-id", "FIND-1"]) == 0
    assert _searches(site) == [
        (
            "sam",
            {**SEARCHED, "via": "cli", "target": "messages", "found": [_uuid(site)]}
            | {"os_user": os_user()},
        )
    ]
