"""The console over HTTP (no browser): what each role sees, audited views, replays, the
dashboard's figures and the bulk dry run. Browser flows are in tests/browser/."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from console_testing import (
    CHANNEL,
    Site,
    csrf_of,
    order,
    sign_in,
    start_site,
    stop_site,
)
from sqlalchemy import select
from tie_testing import wait_until

from router.store.schema import audit_events

OML = "OML_O21_nhs_nwgmsa_v251"
USERS = {"vic": ["viewer"], "sam": ["support"], "ada": ["admin"]}


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    running = start_site(tmp_path, store_url, USERS)
    try:
        yield running
    finally:
        stop_site(running)


def _events(site: Site, action: str) -> list[tuple[str, str]]:
    with site.running.store.read() as conn:
        rows = conn.execute(
            select(audit_events.c.actor, audit_events.c.target).where(
                audit_events.c.action == action
            )
        )
        return [tuple(r) for r in rows]


def test_pages_need_a_session_and_static_files_do_not(site):
    import httpx

    with httpx.Client(base_url=site.url) as anonymous:
        answer = anonymous.get("/messages?status=error")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=/messages%3Fstatus%3Derror"
        htmx = anonymous.get("/static/htmx.min.js")
        assert htmx.status_code == 200 and "htmx" in htmx.text


def test_viewer_sees_metadata_and_support_sees_audited_content(site, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "CONS-1"), "CONS-1", "sent")
    viewer, support = sign_in(site.url, "vic"), sign_in(site.url, "sam")

    listing = viewer.get("/messages", params={"control_id": "CONS-1"})
    assert listing.status_code == 200
    message_id = re.search(r'href="/messages/(\d+)"', listing.text).group(1)

    metadata = viewer.get(f"/messages/{message_id}")
    assert metadata.status_code == 200
    assert "CONS-1" in metadata.text and "CHISLETT" not in metadata.text
    assert "shown to the <strong>support</strong> role only" in metadata.text
    assert _events(site, "view") == []

    content = support.get(f"/messages/{message_id}")
    assert "CHISLETT" in content.text
    assert '<td class="field">PID-5</td>' in content.text
    assert "content-security-policy" in content.headers
    assert [actor for actor, _ in _events(site, "view")] == ["sam"]

    refused = viewer.post(f"/messages/{message_id}/reprocess", data={"reason": "x"})
    assert refused.status_code == 403


def test_forms_without_the_csrf_token_are_refused(site, hl7_samples):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "CONS-2"), "CONS-2", "failed")
    support = sign_in(site.url, "sam")
    page = support.get("/messages", params={"control_id": "CONS-2", "delivery": "failed"})
    message_id = re.search(r'href="/messages/(\d+)"', page.text).group(1)
    detail = support.get(f"/messages/{message_id}")
    delivery = re.search(r'data-delivery="(\d+)"', detail.text).group(1)

    missing = support.post(f"/deliveries/{delivery}/resend", data={"reason": "lab fixed"})
    assert missing.status_code == 403
    assert _events(site, "resend") == []

    site.lab.code = "AA"
    token = csrf_of(detail.text)
    no_reason = support.post(f"/deliveries/{delivery}/resend", data={"csrf_token": token})
    assert no_reason.status_code == 400
    done = support.post(
        f"/deliveries/{delivery}/resend", data={"csrf_token": token, "reason": "lab fixed"}
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/messages/{message_id}?done=resent"
    wait_until(lambda: site.delivery_status("CONS-2") == ["failed", "sent"])
    assert [actor for actor, _ in _events(site, "resend")] == ["sam"]


def test_dashboard_counts_failures_first_and_pause_resume(site, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "CONS-3"), "CONS-3", "sent")
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "CONS-4"), "CONS-4", "failed")
    support = sign_in(site.url, "sam")

    page = support.get("/")
    assert page.status_code == 200
    row = re.search(r'<tr class="attention">(.*?)</tr>', page.text, re.S).group(1)
    cells = re.findall(r'<td class="num">(.*?)</td>', row, re.S)
    # received today, total; filtered today, total; sent today, total; failed today
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells[:7]] == [
        "2",
        "2",
        "0",
        "0",
        "1",
        "1",
        "1",
    ]
    assert f"/messages?channel={CHANNEL}&delivery=failed" in row
    assert "lab: " in row  # the last error names the destination

    token = csrf_of(page.text)
    paused = support.post(f"/channels/{CHANNEL}/pause", data={"csrf_token": token})
    assert paused.status_code == 303
    assert "Resume</button>" in support.get("/").text
    support.post(f"/channels/{CHANNEL}/resume", data={"csrf_token": token})
    assert "Pause</button>" in support.get("/").text
    assert [actor for actor, _ in _events(site, "pause")] == ["sam"]


def test_bulk_resend_lists_first_then_acts_on_what_was_listed(site, hl7_samples):
    site.lab.code = "AR"
    for n in (5, 6):
        site.send_and_settle(order(hl7_samples[OML], f"CONS-{n}"), f"CONS-{n}", "failed")
    site.lab.code = "AA"
    support = sign_in(site.url, "sam")
    listing = support.get("/messages").text
    token = csrf_of(listing)
    newest = re.search(r'href="/messages/(\d+)"', listing).group(1)
    older = support.get("/messages/rows", params={"channel": CHANNEL, "before": newest}).text
    assert "CONS-5" in older and "CONS-6" not in older and "<html" not in older

    search = {"channel": CHANNEL, "delivery": "failed", "csrf_token": token}
    preview = support.post("/messages/bulk/preview", data={**search, "action": "resend"})
    assert preview.status_code == 200
    assert preview.text.count("would resend delivery") == 2
    assert _events(site, "resend") == []
    ids = re.search(r'name="ids" value="([\d,]+)"', preview.text).group(1)

    done = support.post(
        "/messages/bulk",
        data={"csrf_token": token, "action": "resend", "ids": ids, "reason": "lab back"},
    )
    assert done.status_code == 200 and "2 item(s) resent" in done.text
    wait_until(lambda: site.delivery_status("CONS-5") == ["failed", "sent"])
    wait_until(lambda: site.delivery_status("CONS-6") == ["failed", "sent"])


def test_audit_page_pages_and_verifies_the_chain(site):
    support = sign_in(site.url, "sam")
    page = support.get("/audit", params={"actor": "test"})
    assert page.status_code == 200
    assert page.text.count(">user-add<") == len(USERS)
    verdict = support.get("/audit/verify", headers={"HX-Request": "true"})
    assert "Chain intact" in verdict.text
    assert sign_in(site.url, "vic").get("/audit").status_code == 403


HELD_YAML = """\
name: release
source:
  mllp:
    port: 0
destinations:
  archive:
    file:
      directory: {folder}
    hold:
      approvals: 2
"""


def test_a_held_batch_is_requested_then_released_by_two_other_approvers(
    tmp_path, store_url, hl7_samples
):
    from hl7.client import MLLPClient

    from router.store.schema import deliveries

    folder = tmp_path / "archive"
    users = {"sam": ["support"], "bob": ["approver"], "cat": ["approver"]}
    site = start_site(
        tmp_path, store_url, users, channels={"release": HELD_YAML.format(folder=folder)}
    )
    try:
        raw = order(hl7_samples[OML], "HELD-1")
        with MLLPClient("127.0.0.1", site.running.port("release")) as client:
            client.send_message(raw)

        def held() -> list[str]:
            with site.running.store.read() as conn:
                return list(conn.scalars(select(deliveries.c.status)))

        wait_until(lambda: held() == ["held"])
        sam, bob, cat = (sign_in(site.url, n) for n in ("sam", "bob", "cat"))
        inbox = sam.get("/approvals")
        assert "release → archive: not yet requested" in inbox.text
        requested = sam.post(
            "/approvals/holds/release/archive/request", data={"csrf_token": csrf_of(inbox.text)}
        )
        assert requested.status_code == 303

        page = bob.get("/approvals")
        batch = re.search(r'action="/approvals/holds/(\d+)/approve"', page.text).group(1)
        assert "OML^O21" in page.text  # the summary by message type
        bob.post(f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)})
        again = bob.post(
            f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)}
        )
        assert again.status_code == 403 and "approved batch" in again.text
        assert held() == ["held"]
        page = cat.get("/approvals")
        cat.post(f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)})
        wait_until(lambda: held() == ["sent"])
        assert len(list(folder.iterdir())) == 1
    finally:
        stop_site(site)
