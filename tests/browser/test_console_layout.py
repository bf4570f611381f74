"""The console's layout holds whatever the content: a page is never wider than the window
(at 1280x800 and at 800 px wide), so nothing needs scrolling sideways to be found."""

from __future__ import annotations

from console_testing import order
from playwright.sync_api import Page

OML = "OML_O21_nhs_nwgmsa_v251"


def _width(page: Page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def test_a_very_long_field_wraps_inside_the_message_page(site, signed_in, hl7_samples):
    name = "X" * 3000 + "^" + "Y" * 400
    site.send_and_settle(order(hl7_samples[OML], "LONG-1", name=name), "LONG-1", "sent")
    page = signed_in("sam")
    page.set_viewport_size({"width": 1280, "height": 800})

    page.goto("/messages?control_id=LONG-1")
    page.locator("tbody tr").first.get_by_role("link").click()
    page.get_by_text("Segments and fields").wait_for()
    assert _width(page) <= 1280


def test_every_page_fits_a_window_800_px_wide(site, signed_in, hl7_samples):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "NARROW-1"), "NARROW-1", "failed")
    page = signed_in("sam")
    page.set_viewport_size({"width": 800, "height": 800})

    for path in ("/", "/messages", "/approvals", "/audit"):
        page.goto(path)
        assert _width(page) <= 800, path
    page.goto("/messages?control_id=NARROW-1")
    page.locator("tbody tr").first.get_by_role("link").click()
    page.locator("#deliveries").wait_for()
    assert _width(page) <= 800
