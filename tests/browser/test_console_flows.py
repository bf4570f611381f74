"""What support staff and approvers do in the console, in a real browser against a running
engine with a real MLLP lab: resend a failed delivery, four-eyes approval, hostile content."""

from __future__ import annotations

import re

from console_testing import CHANNEL, order
from playwright.sync_api import expect
from sqlalchemy import select

from router.store.schema import audit_events

OML = "OML_O21_nhs_nwgmsa_v251"


def _audit(site, action: str) -> list[tuple[str, str]]:
    with site.running.store.read() as conn:
        query = select(audit_events.c.actor, audit_events.c.details).where(
            audit_events.c.action == action
        )
        return [tuple(row) for row in conn.execute(query)]


def test_find_a_failed_message_resend_it_with_a_reason_and_see_it_sent(
    site, signed_in, hl7_samples
):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "ORDER-FAIL-1"), "ORDER-FAIL-1", "failed")
    site.send_and_settle(order(hl7_samples[OML], "ORDER-FAIL-2"), "ORDER-FAIL-2", "failed")
    site.lab.code = "AA"
    page = signed_in("sam")

    page.get_by_role("link", name="Messages").click()
    page.get_by_label("Delivery status").select_option("failed")
    page.get_by_label("Control id (MSH-10)").fill("ORDER-FAIL-2")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ORDER-FAIL-2")
    rows.first.get_by_role("link").click()

    expect(page.get_by_role("heading", name=re.compile(r"Message \d+"))).to_be_visible()
    failed = page.locator("#deliveries tbody tr")
    expect(failed).to_have_count(1)
    expect(failed.first).to_contain_text("failed")
    failed.first.get_by_role("button", name="Resend…").click()

    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Reason").fill("lab interface restarted")
    dialog.get_by_role("button", name="Preview (dry run)").click()
    expect(dialog.locator(".preview")).to_contain_text("would resend delivery")
    expect(dialog.locator(".preview")).to_contain_text("(failed) to lab-orders/lab")
    dialog.get_by_role("button", name="Resend", exact=True).click()

    expect(page.get_by_role("status")).to_contain_text("Resent")
    rows = page.locator("#deliveries tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(1).locator(".status")).to_have_text("sent")
    assert site.delivery_status("ORDER-FAIL-2") == ["resent", "sent"]
    assert site.lab.control_ids().count("ORDER-FAIL-2") == 2
    resend = _audit(site, "resend")
    assert [actor for actor, _ in resend] == ["sam"]
    assert "lab interface restarted" in resend[0][1]
    assert [actor for actor, _ in _audit(site, "view")] == ["sam", "sam"]


def test_an_author_cannot_approve_their_own_revision_another_approver_can(site, signed_in):
    alice = signed_in("alice")
    alice.get_by_role("link", name="Approvals").click()
    alice.get_by_label("Propose a change to").select_option(CHANNEL)
    alice.get_by_role("button", name="Edit…").click()
    editor = alice.get_by_label("Channel file (YAML)")
    text = editor.input_value()
    assert "description: orders to the lab" in text
    editor.fill(text.replace("orders to the lab", "orders to the genomics lab"))
    alice.get_by_label("Reason").fill("name the lab")
    alice.get_by_role("button", name="Propose").click()

    expect(alice.get_by_role("status")).to_contain_text("Proposed")
    proposal = alice.locator(".proposal")
    expect(proposal).to_contain_text("Proposed by alice")
    expect(proposal.locator(".diff .del")).to_have_text("-description: orders to the lab")
    expect(proposal.locator(".diff .add")).to_have_text("+description: orders to the genomics lab")
    proposal.get_by_role("button", name="Approve and deploy").click()
    expect(alice.get_by_role("alert")).to_contain_text("alice proposed lab-orders")
    expect(alice.locator(".proposal .status")).to_have_text("proposed")

    bob = signed_in("bob")
    bob.get_by_role("link", name="Approvals").click()
    bob.locator(".proposal").get_by_role("button", name="Approve and deploy").click()
    expect(bob.get_by_role("status")).to_contain_text("Approved")
    expect(bob.locator(".proposal")).to_have_count(0)
    newest = bob.locator("table tbody tr").first
    expect(newest).to_contain_text("alice")
    expect(newest).to_contain_text("bob")
    assert [actor for actor, _ in _audit(site, "revision.approve")] == ["bob"]

    alice.get_by_role("link", name="Approvals").click()
    alice.get_by_role("button", name="Roll back to #1…").click()
    dialog = alice.get_by_role("dialog")
    dialog.get_by_label("Reason").fill("genomics lab not live yet")
    dialog.get_by_role("button", name="Propose rollback").click()
    expect(alice.get_by_role("status")).to_contain_text(f"Proposed {CHANNEL} #3, a rollback")
    expect(alice.locator(".proposal .diff .add")).to_have_text("+description: orders to the lab")


def test_script_in_an_hl7_field_is_shown_as_text_and_never_runs(site, signed_in, hl7_samples):
    hostile = "<script>window.__xss=1</script>^<img src=x onerror=alert(document.domain)>"
    site.send_and_settle(order(hl7_samples[OML], "XSS-1", name=hostile), "XSS-1", "sent")
    page = signed_in("sam")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto("/messages?control_id=XSS-1")
    page.locator("tbody tr").first.get_by_role("link").click()
    raw = page.locator("#raw")
    expect(raw).to_contain_text("PID|1||633^^^R0A^MR")
    expect(raw).to_contain_text(hostile)
    pid5 = page.locator("tr", has=page.locator("td.field", has_text=re.compile("^PID-5$")))
    expect(pid5).to_contain_text("<script>window.__xss=1</script>")
    expect(pid5).to_contain_text("<img src=x onerror=alert(document.domain)>")
    assert page.locator("main script").count() == 0
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
