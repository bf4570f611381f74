"""A support engineer's night: from a search to a bulk action and back, in a real browser
against a running engine and an MLLP lab that fails and then recovers."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from console_testing import CHANNEL, PASSWORD, order
from playwright.sync_api import expect
from sqlalchemy import func, select

from router.store.schema import messages

OML = "OML_O21_nhs_nwgmsa_v251"


def test_a_bulk_resend_links_to_each_message_and_back_to_the_same_search(
    site, signed_in, hl7_samples
):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "NIGHT-1"), "NIGHT-1", "failed")
    site.lab.code = "AA"
    site.send_and_settle(order(hl7_samples[OML], "NIGHT-2"), "NIGHT-2", "sent")
    page = signed_in("sam")

    page.goto("/messages")
    page.get_by_label("Channel").select_option(CHANNEL)
    page.get_by_label("Delivery status").select_option("failed")
    page.get_by_role("button", name="Search").click()
    searched = page.url
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("ol li")).to_have_text(re.compile(r"would resend delivery \d+"))
    page.get_by_label("Reason").fill("lab LIMS restarted")
    page.get_by_role("button", name="Confirm: resend 1 item(s)").click()

    expect(page.get_by_role("status")).to_contain_text("1 item(s) resent")
    message = page.get_by_role("link", name=re.compile(r"^message \d+$")).get_attribute("href")
    page.get_by_role("link", name="Back to the search").click()
    assert parse_qs(urlsplit(page.url).query) == parse_qs(urlsplit(searched).query)
    expect(page.get_by_label("Channel")).to_have_value(CHANNEL)
    expect(page.get_by_label("Delivery status")).to_have_value("failed")
    page.goto(message)
    expect(page.locator("dl.meta")).to_contain_text("NIGHT-1")


def test_a_session_ended_before_resend_signs_in_back_to_the_message(site, signed_in, hl7_samples):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "NIGHT-3"), "NIGHT-3", "failed")
    page = signed_in("sam")
    page.goto("/messages?control_id=NIGHT-3")
    page.locator("tbody tr").first.get_by_role("link").click()
    message = page.url
    page.locator("#deliveries").get_by_role("button", name="Resend…").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Reason").fill("lab back")
    page.context.clear_cookies()  # the session ended meanwhile
    dialog.get_by_role("button", name="Resend", exact=True).click()

    page.get_by_label("User name").fill("sam")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=re.compile(r"Message \d+"))).to_be_visible()
    assert page.url == message
    assert site.delivery_status("NIGHT-3") == ["failed"]


def test_reloading_the_result_of_a_bulk_reprocess_does_not_reprocess_again(
    site, signed_in, hl7_samples
):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "NIGHT-4"), "NIGHT-4", "failed")
    page = signed_in("sam")
    page.goto("/messages?control_id=NIGHT-4")
    page.get_by_label("Action").select_option("reprocess")
    page.get_by_role("button", name="Dry run").click()
    page.get_by_label("Reason").fill("mapping fixed")
    page.get_by_role("button", name="Confirm: reprocess 1 item(s)").click()
    expect(page.get_by_role("status")).to_contain_text("1 item(s) reprocessed")

    page.reload()
    expect(page.get_by_role("status")).to_contain_text("1 item(s) reprocessed")
    expect(page.get_by_role("status")).to_contain_text("mapping fixed")
    expect(page.get_by_role("link", name="the new message")).to_have_count(1)
    with site.running.store.read() as conn:
        copies = conn.scalar(select(func.count()).where(messages.c.control_id == "NIGHT-4"))
    assert copies == 2  # the original and one copy
