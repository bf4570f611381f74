"""A message's page follows the message while it is open: its deliveries as they are sent or
fail, and the message itself once a paused channel is resumed, in a real browser against a
running engine and an MLLP lab."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from console_testing import CHANNEL, PASSWORD, Site, order, running_site
from hl7.client import MLLPClient
from playwright.sync_api import Page, expect
from sqlalchemy import select, update
from tie_testing import Hl7Receiver, free_ports, wait_until

from router.channel_control import set_paused
from router.store.inbound import utcnow
from router.store.schema import messages, sessions

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


# One destination that refuses for an hour (so the page keeps polling), one that rejects (AR).
SPLIT_YAML = """\
name: split
source:
  mllp:
    port: 0
destinations:
  pas:
    mllp:
      host: 127.0.0.1
      port: {refused}
    retry:
      max_attempts: 50
      backoff: [1m, 1h]
  lab:
    mllp:
      host: 127.0.0.1
      port: {lab}
"""


@pytest.fixture
def split(tmp_path: Path, hl7_samples) -> Iterator[tuple[Site, int]]:
    """A site whose channel ``split`` has stored one message (SPLIT-1): its delivery to
    ``pas`` retrying, to ``lab`` failed; with the id of that message."""
    (refused,) = free_ports(1)
    lab = Hl7Receiver(lambda _message: "AR")
    channels = {"split": SPLIT_YAML.format(refused=refused, lab=lab.port)}
    try:
        with running_site(
            tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", {"sam": ["support"]}, channels=channels
        ) as site:
            with MLLPClient("127.0.0.1", site.running.port("split")) as client:
                client.send_message(order(hl7_samples[OML], "SPLIT-1"))
            wait_until(lambda: sorted(site.delivery_status("SPLIT-1")) == ["failed", "retrying"])
            with site.running.store.read() as conn:
                message_id = conn.scalar(
                    select(messages.c.id).where(messages.c.control_id == "SPLIT-1")
                )
            yield site, message_id
    finally:
        lab.stop()


# Resolves once the page has twice tried to refresh its deliveries (every 2 s).
TWO_REFRESHES = """() => new Promise((resolve) => {
    let ticks = 0;
    document.addEventListener("htmx:beforeRequest", () => { if (++ticks === 2) resolve(); });
})"""


def _open_as_sam(browser, site: Site, path: str) -> Page:
    page = browser.new_context(base_url=site.url).new_page()
    page.goto("/login")
    page.get_by_label("User name").fill("sam")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Channels")).to_be_visible()
    page.goto(path)
    return page


def _a_colleague_resends_the_failed_delivery(browser, site: Site, message_id: int) -> None:
    other = _open_as_sam(browser, site, f"/messages/{message_id}")
    other.locator("#deliveries tr", has_text="failed").get_by_role("button", name="Resend…").click()
    other.get_by_role("dialog").get_by_label("Reason").fill("lab back")
    other.get_by_role("dialog").get_by_role("button", name="Resend", exact=True).click()
    expect(other.get_by_role("status")).to_contain_text("Resent")
    other.context.close()


def test_a_delivery_that_appears_on_refresh_can_be_resent_and_a_refresh_keeps_the_dialog(
    browser, split
):
    site, message_id = split
    page = _open_as_sam(browser, site, f"/messages/{message_id}")
    rows = page.locator("#deliveries tbody tr")
    expect(rows).to_have_count(2)

    _a_colleague_resends_the_failed_delivery(browser, site, message_id)
    copy = rows.filter(has_text=re.compile(r"^\s*\d+\s+lab")).last
    expect(rows).to_have_count(3)
    expect(copy.locator(".status")).to_have_text("failed")
    resent = rows.filter(has=page.locator(".status", has_text="resent"))
    expect(resent).to_contain_text(f"→ #{copy.get_attribute('data-delivery')}")  # as on load
    copy.get_by_role("button", name="Resend…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label("Reason").fill("lab back again")
    page.evaluate(TWO_REFRESHES)  # the page's pas delivery is still on its way
    expect(dialog.get_by_label("Reason")).to_have_value("lab back again")
    dialog.get_by_role("button", name="Resend", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Resent")
    expect(rows).to_have_count(4)
    page.context.close()


def test_what_a_refresh_changes_in_the_deliveries_is_said_aloud(browser, split):
    """WCAG 4.1.3: the table is replaced silently; a polite live region says what changed."""
    site, message_id = split
    page = _open_as_sam(browser, site, f"/messages/{message_id}")
    rows = page.locator("#deliveries tbody tr")
    expect(rows).to_have_count(2)

    _a_colleague_resends_the_failed_delivery(browser, site, message_id)
    expect(rows).to_have_count(3)
    copy = rows.last.get_attribute("data-delivery")
    news = page.locator("#deliveries-news")
    expect(news).to_have_attribute("aria-live", "polite")
    expect(news).to_contain_text(f"Delivery {copy}: failed.")
    page.context.close()


def test_the_refresh_of_the_deliveries_can_be_paused_and_resumed(browser, split):
    """WCAG 2.2.2: content that updates itself for as long as a delivery retries (here an
    hour) has a way to stop it."""
    site, message_id = split
    page = _open_as_sam(browser, site, f"/messages/{message_id}")
    rows = page.locator("#deliveries tbody tr")
    expect(rows).to_have_count(2)
    page.get_by_label("Refresh every 2 seconds").uncheck()

    _a_colleague_resends_the_failed_delivery(browser, site, message_id)
    page.evaluate(TWO_REFRESHES)
    expect(rows).to_have_count(2)
    page.get_by_label("Refresh every 2 seconds").check()
    expect(rows).to_have_count(3)
    expect(page.get_by_label("Refresh every 2 seconds")).to_be_checked()
    page.context.close()


def test_the_refresh_of_the_deliveries_does_not_keep_the_session_alive(browser, split):
    """WCAG 2.2.1: a page left open refreshes itself, but its session still ends when idle."""
    site, message_id = split
    page = _open_as_sam(browser, site, f"/messages/{message_id}")
    expect(page.locator("#deliveries tbody tr")).to_have_count(2)
    ten_minutes_ago = utcnow() - timedelta(minutes=10)
    with site.running.store.begin() as conn:
        conn.execute(update(sessions).values(last_seen_at=ten_minutes_ago))

    with page.expect_response(re.compile(r"/deliveries\?")) as refresh:
        pass
    assert refresh.value.status == 200
    with site.running.store.read() as conn:
        assert conn.scalar(select(sessions.c.last_seen_at)) == ten_minutes_ago
    page.context.close()
