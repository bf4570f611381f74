"""WCAG 2.2.1 Timing Adjustable: the console warns before its session ends, lets an idle one
be extended, and does not silently lose a reason typed when the session ended anyway.

The page's clock is Playwright's (``page.clock``), moved on by hand: no test waits for
time to pass. Where the session must really have ended on the server, the test ages it in
the store, as the idle limit would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from console_testing import PASSWORD, Site, order, running_site
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select, update

from router.store.inbound import utcnow
from router.store.schema import deliveries, sessions

OML = "OML_O21_nhs_nwgmsa_v251"
IDLE = {"session_idle": "10m", "session_warning": "2m"}
WARNING = "You are about to be signed out"
WCAG_21_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def _site(tmp_path: Path, **auth: Any) -> Iterator[Site]:
    store_url = f"sqlite:///{tmp_path / 'tie.db'}"
    with running_site(tmp_path, store_url, {"sam": ["support"]}, auth=auth) as site:
        yield site


@pytest.fixture
def idle_site(tmp_path: Path) -> Iterator[Site]:
    """Sessions end after 10 idle minutes; the console warns 2 minutes before."""
    yield from _site(tmp_path, **IDLE)


@pytest.fixture
def short_lived_site(tmp_path: Path) -> Iterator[Site]:
    """Sessions end 10 minutes after sign-in, whatever is done (idle: 30 minutes)."""
    yield from _site(tmp_path, session_lifetime="10m", session_idle="30m", session_warning="2m")


def _sign_in(page: Page) -> None:
    page.get_by_label("User name").fill("sam")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def _open(browser: Browser, site: Site, path: str) -> Page:
    """A page signed in as sam at ``path``, its clock under the test's control."""
    page = browser.new_context(base_url=site.url).new_page()
    page.clock.install()
    page.goto("/login")
    _sign_in(page)
    expect(page.get_by_role("heading", name="Channels")).to_be_visible()
    page.goto(path)
    return page


def _violations(page: Page) -> list[str]:
    """axe-core's WCAG 2.1 A and AA violations on the page as it is now."""
    results = Axe().run(page, options=WCAG_21_AA)
    return [
        f"{v['id']}: {node['target']}"
        for v in results.response["violations"]
        for node in v["nodes"]
    ]


def _end_sessions_on_the_server(site: Site) -> None:
    with site.running.store.begin() as conn:
        conn.execute(update(sessions).values(last_seen_at=utcnow() - timedelta(hours=1)))


def _failed_message(site: Site, hl7_samples: dict[str, bytes]) -> int:
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "TIMEOUT-1"), "TIMEOUT-1", "failed")
    with site.running.store.read() as conn:
        return conn.scalar(select(deliveries.c.message_id))


def test_an_idle_session_warns_before_it_ends_and_can_be_kept(browser, idle_site):
    page = _open(browser, idle_site, "/messages")
    warning = page.get_by_role("alertdialog", name=WARNING)
    said = page.locator("#session-idle-said")

    # Signing in noted activity a moment before the page loaded: the warning may come a
    # few seconds before 8 minutes on the page's clock, never a minute early or late.
    page.clock.fast_forward("07:00")
    expect(warning).to_be_hidden()
    page.clock.fast_forward("01:01")
    expect(warning).to_be_visible()
    expect(warning.get_by_role("button", name="Stay signed in")).to_be_focused()
    expect(said).to_have_attribute("aria-live", "polite")
    expect(said).to_have_text("You will be signed out in 2 minutes.")
    assert _violations(page) == []
    countdown = warning.locator("[data-countdown]")
    expect(countdown).to_have_text(re.compile(r"^1 minute 5\d seconds$"))
    shown = countdown.inner_text()
    page.clock.fast_forward("00:05")  # the visible countdown moves, what is said does not
    expect(countdown).not_to_have_text(shown)
    expect(said).to_have_text("You will be signed out in 2 minutes.")
    page.clock.fast_forward("01:10")  # 44 s left
    expect(said).to_have_text("You will be signed out in 45 seconds.")

    with idle_site.running.store.begin() as conn:
        conn.execute(update(sessions).values(last_seen_at=utcnow() - timedelta(minutes=9)))
    with page.expect_response("**/session/keep-alive") as kept:
        warning.get_by_role("button", name="Stay signed in").click()
    assert kept.value.status == 200
    expect(warning).to_be_hidden()
    with idle_site.running.store.read() as conn:
        seen = conn.scalar(select(sessions.c.last_seen_at))
    assert utcnow() - seen < timedelta(seconds=30), "staying signed in is activity"

    page.clock.fast_forward("07:50")
    expect(warning).to_be_hidden()
    page.clock.fast_forward("00:11")
    expect(warning).to_be_visible()
    warning.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    with idle_site.running.store.read() as conn:
        assert conn.execute(select(sessions)).all() == []
    page.context.close()


def test_a_reason_typed_when_the_idle_limit_ends_the_session_is_offered_back(
    browser, idle_site, hl7_samples
):
    message_id = _failed_message(idle_site, hl7_samples)
    page = _open(browser, idle_site, f"/messages/{message_id}")
    page.get_by_role("button", name="Resend…").click()
    dialog = page.get_by_role("dialog", name=re.compile("Resend delivery"))
    dialog.get_by_label("Reason").fill("lab interface restarted")
    page.clock.fast_forward("08:01")
    expect(page.get_by_role("alertdialog", name=WARNING)).to_be_visible()

    _end_sessions_on_the_server(idle_site)  # as 10 idle minutes would
    page.clock.fast_forward("02:00")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text('You were signed out, so "Resend delivery')
    _sign_in(page)

    expect(page).to_have_url(re.compile(f"/messages/{message_id}$"))
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("nothing was changed")
    assert _violations(page) == []
    expect(dialog.get_by_label("Reason")).to_have_value("lab interface restarted")
    dialog.get_by_role("button", name="Resend", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Resent")
    page.context.close()


def test_a_reason_submitted_after_the_session_ended_is_not_lost(browser, idle_site, hl7_samples):
    """The reproduction: the session ends on the server, then the dialog is submitted."""
    message_id = _failed_message(idle_site, hl7_samples)
    page = _open(browser, idle_site, f"/messages/{message_id}")
    page.get_by_role("button", name="Resend…").click()
    dialog = page.get_by_role("dialog", name=re.compile("Resend delivery"))
    dialog.get_by_label("Reason").fill("lab interface restarted")
    _end_sessions_on_the_server(idle_site)
    dialog.get_by_role("button", name="Resend", exact=True).click()

    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("was not done")
    assert _violations(page) == []
    assert idle_site.delivery_status("TIMEOUT-1") == ["failed"], "nothing was resent"
    _sign_in(page)
    expect(dialog.get_by_label("Reason")).to_have_value("lab interface restarted")
    dialog.get_by_role("button", name="Resend", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Resent")
    page.goto(f"/messages/{message_id}")
    expect(dialog).to_be_hidden()  # offered back once, not on every visit
    page.context.close()


def test_a_session_near_its_lifetime_says_when_it_ends_and_cannot_be_extended(
    browser, short_lived_site
):
    page = _open(browser, short_lived_site, "/messages")
    ending = page.get_by_role("alertdialog", name="Your session is about to end")
    page.clock.fast_forward("07:00")
    expect(ending).to_be_hidden()
    page.clock.fast_forward("01:01")
    expect(ending).to_be_visible()
    expect(ending).to_contain_text("cannot be extended")
    expect(ending).to_contain_text("save anything you have typed")
    expect(ending.locator("time")).to_have_text(re.compile(r"\d\d:\d\d"))
    expect(ending.get_by_role("button", name="Stay signed in")).to_have_count(0)
    expect(ending.get_by_role("button", name="Continue")).to_be_focused()
    assert _violations(page) == []
    ending.get_by_role("button", name="Continue").click()
    expect(ending).to_be_hidden()
    page.clock.fast_forward("01:00")
    expect(ending).to_be_hidden()  # said once
    page.context.close()
