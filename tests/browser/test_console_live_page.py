"""A message's page follows the message while it is open: its deliveries as they are sent or
fail, and the message itself once a paused channel is resumed, in a real browser against a
running engine and an MLLP lab."""

from __future__ import annotations

import re

from console_testing import CHANNEL, order
from playwright.sync_api import expect

from router.channel_control import set_paused

OML = "OML_O21_nhs_nwgmsa_v251"


def test_a_waiting_message_page_shows_it_processed_once_its_channel_is_resumed(
    site, signed_in, hl7_samples
):
    set_paused(site.running.store, CHANNEL, True, actor="ops", reason="lab maintenance")
    site.send(order(hl7_samples[OML], "WAIT-1"))
    page = signed_in("sam")
    page.goto("/messages?control_id=WAIT-1")
    page.locator("tbody tr").first.get_by_role("link").click()
    waiting = page.get_by_text(re.compile("so this one waits"))
    expect(waiting).to_be_visible()
    expect(page.locator("#deliveries tbody tr")).to_have_text(re.compile("No deliveries"))

    other = signed_in("sam")
    other.get_by_role("button", name="Resume…").click()
    other.get_by_role("dialog").get_by_role("button", name="Resume", exact=True).click()

    expect(page.locator("#deliveries tbody tr .status")).to_have_text("sent")
    expect(waiting).to_have_count(0)
    expect(page.get_by_role("heading", name=re.compile(r"Message \d+"))).to_contain_text(
        "processed"
    )
