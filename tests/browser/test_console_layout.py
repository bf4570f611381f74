"""The console's layout holds whatever the content: a page is never wider than the window
(at 1280x800 and at 800 px wide), so nothing needs scrolling sideways to be found."""

from __future__ import annotations

from console_testing import FEED_YAML, PASSWORD, order, running_site
from hl7.client import MLLPClient
from playwright.sync_api import Page, expect
from tie_testing import free_ports, wait_until

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
    page.wait_for_load_state("load")  # the stylesheet too: a page measured without it is wide
    assert _width(page) <= 1280


def test_every_page_fits_a_window_800_px_wide(site, signed_in, hl7_samples):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "NARROW-1"), "NARROW-1", "failed")
    page = signed_in("sam")
    page.set_viewport_size({"width": 800, "height": 800})

    for path in ("/", "/messages", "/approvals", "/audit", "/jobs"):
        page.goto(path)
        assert _width(page) <= 800, path
    page.goto("/messages?control_id=NARROW-1")
    page.locator("tbody tr").first.get_by_role("link").click()
    page.locator("#deliveries").wait_for()
    page.wait_for_load_state("load")
    assert _width(page) <= 800


ADDRESS_IN_ONE_LINE = """(address) => {
    const cell = [...document.querySelectorAll('td.error-text')]
        .find((td) => td.textContent.includes(address));
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    let node;
    while ((node = walker.nextNode()) && !node.data.includes(address)) {}
    const range = document.createRange();
    range.setStart(node, node.data.indexOf(address));
    range.setEnd(node, node.data.indexOf(address) + address.length);
    return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size === 1;
}"""


def test_an_error_keeps_its_words_whole_in_the_dashboard_and_the_deliveries(
    tmp_path, browser, hl7_samples
):
    (port,) = free_ports(1)  # nobody listens: each attempt is refused
    channels = {"feed": FEED_YAML.format(port=port)}
    with running_site(
        tmp_path, f"sqlite:///{tmp_path / 'tie.db'}", {"sam": ["support"]}, channels=channels
    ) as site:
        with MLLPClient("127.0.0.1", site.running.port("feed")) as client:
            client.send_message(order(hl7_samples[OML], "REFUSED-1"))
        wait_until(lambda: site.delivery_status("REFUSED-1") == ["retrying"])
        context = browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("User name").fill("sam")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        address = f"127.0.0.1:{port}"

        expect(page.locator("td.error-text", has_text=address)).to_be_visible()
        assert page.evaluate(ADDRESS_IN_ONE_LINE, address)
        page.set_viewport_size({"width": 800, "height": 800})
        page.goto("/messages?control_id=REFUSED-1")
        page.locator("tbody tr").first.get_by_role("link").click()
        expect(page.locator("#deliveries td.error-text", has_text=address)).to_be_visible()
        assert page.evaluate(ADDRESS_IN_ONE_LINE, address)
        context.close()
