"""Browser tests: Debian's headless Chromium driven by Playwright, one browser per module.

Playwright's own browser downloads are never used: the system ``chromium`` package runs
(``.ci/run`` installs it). Each test gets fresh browser contexts (one per user), so
sessions never leak between tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from console_testing import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Site, running_site
from playwright.sync_api import Browser, Page, expect, sync_playwright

USERS = {
    "sam": ["support"],
    "alice": ["engineer", "approver"],
    "bob": ["approver"],
}

expect.set_options(timeout=15_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Not session-wide: while Playwright's sync API runs, its event loop is the running loop
    of the main thread, and every later test calling ``asyncio.run`` would fail."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """The engine on SQLite, in governed mode, with a lab and the users above."""
    store_url = f"sqlite:///{tmp_path / 'tie.db'}"
    with running_site(tmp_path, store_url, USERS, governance="governed") as running:
        yield running


@pytest.fixture
def signed_in(browser: Browser, site: Site) -> Iterator[Callable[[str], Page]]:
    """``signed_in(name)``: a page of a new browser context, signed in as ``name``."""
    contexts = []

    def open_as(name: str) -> Page:
        context = browser.new_context(base_url=site.url)
        contexts.append(context)
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("User name").fill(name)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Channels")).to_be_visible()
        return page

    yield open_as
    for context in contexts:
        context.close()
