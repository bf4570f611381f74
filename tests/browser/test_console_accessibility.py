"""The console against WCAG 2.1 AA where only a browser shows it: a focus indicator that
stands out from what is behind it (1.4.11), pages that reflow to 320 px (1.4.10), focus
kept in place when htmx replaces what had it (2.4.3), in a real browser against a
running engine."""

from __future__ import annotations

import re

from axe_playwright_python.sync_playwright import Axe
from console_testing import CHANNEL, PASSWORD, order
from playwright.sync_api import Page, expect

OML = "OML_O21_nhs_nwgmsa_v251"

# The colours of the focused element's indicator (outline and box shadows), and the
# colour behind it: the first ancestor's background that is not transparent.
FOCUS_COLOURS = """() => {
    const e = document.activeElement;
    const style = getComputedStyle(e);
    let behind = e.parentElement;
    while (behind && getComputedStyle(behind).backgroundColor === "rgba(0, 0, 0, 0)") {
        behind = behind.parentElement;
    }
    const indicator = style.outlineStyle === "none" ? "" : style.outlineColor;
    return {
        indicator: indicator + " " + style.boxShadow,
        behind: behind ? getComputedStyle(behind).backgroundColor : "rgb(255, 255, 255)",
        text: (e.textContent || e.name || "").trim().slice(0, 30),
    };
}"""


def _rgb(text: str) -> list[tuple[int, int, int]]:
    return [
        tuple(int(n) for n in found.groups())
        for found in re.finditer(r"rgba?\((\d+), (\d+), (\d+)(?:, 1)?\)", text)
    ]


def _luminance(rgb: tuple[int, int, int]) -> float:
    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _sign_in_by_keyboard(page: Page, name: str = "sam") -> None:
    page.goto("/login")
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Channels")).to_be_visible()


def test_the_focus_indicator_stands_out_from_what_is_behind_it(site, browser):
    """Every control reached by Tab on the messages page (header, form, buttons, links)."""
    page = browser.new_context(base_url=site.url).new_page()
    _sign_in_by_keyboard(page)
    page.goto("/messages")
    weak = []
    for _ in range(16):
        page.keyboard.press("Tab")
        seen = page.evaluate(FOCUS_COLOURS)
        (behind,) = _rgb(seen["behind"])
        best = max((contrast(c, behind) for c in _rgb(seen["indicator"])), default=0)
        if best < 3:
            weak.append((seen["text"], seen["indicator"], seen["behind"], round(best, 2)))
    page.context.close()
    assert weak == []


def test_every_page_reflows_to_320_px_wide(site, signed_in, hl7_samples):
    """400% zoom of a 1280 px window: nothing but a wide table may scroll, in its own box."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "ZOOM-1"), "ZOOM-1", "failed")
    page = signed_in("sam")
    page.set_viewport_size({"width": 320, "height": 800})
    wide = {}
    for path in ("/", "/messages", "/messages?control_id=ZOOM-1", "/approvals", "/audit"):
        page.goto(path)
        page.wait_for_load_state("load")
        wide[path] = page.evaluate("document.documentElement.scrollWidth")
    page.goto("/messages?control_id=ZOOM-1")
    page.locator("tbody tr").first.get_by_role("link").click()
    page.locator("#deliveries").wait_for()
    page.wait_for_load_state("load")
    wide["message"] = page.evaluate("document.documentElement.scrollWidth")
    assert {path: width for path, width in wide.items() if width > 320} == {}


def test_older_rows_take_the_focus_from_the_link_that_fetched_them(site, browser, monkeypatch):
    """The audit log, two events a page: Enter on "Older events" lands on the first of them."""
    monkeypatch.setattr("router.console.audit_log.PAGE", 2)
    page = browser.new_context(base_url=site.url).new_page()
    _sign_in_by_keyboard(page)
    page.goto("/audit")
    rows = page.locator("table tbody tr:not(.pager)")
    expect(rows).to_have_count(2)
    page.get_by_role("link", name="Older events").focus()
    page.keyboard.press("Enter")
    expect(rows).to_have_count(4)
    expect(rows.nth(2).locator(":focus")).to_have_count(1)
    page.context.close()


def test_a_page_title_names_the_step_and_says_when_something_was_refused(
    site, signed_in, hl7_samples
):
    """A screen reader announces the title first: dry run, refusal and result differ."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "TITLE-1"), "TITLE-1", "failed")
    page = signed_in("sam")
    page.goto("/messages?since=yesterday")
    expect(page).to_have_title("Error: Messages · tie console")
    page.goto("/messages?control_id=TITLE-1")
    expect(page).to_have_title("Messages · tie console")
    page.get_by_role("button", name="Dry run").click()
    expect(page).to_have_title("Bulk resend: dry run · tie console")
    page.get_by_label("Reason").fill("   ")
    page.get_by_role("button", name="Confirm: resend 1 item(s)").click()
    expect(page).to_have_title("Error: Bulk resend: dry run · tie console")
    page.get_by_label("Reason").fill("lab back")
    page.get_by_role("button", name="Confirm: resend 1 item(s)").click()
    expect(page).to_have_title("Bulk resend: done · tie console")


def _tab_to(page: Page, name: str, *, most: int = 80) -> None:
    """Press Tab until the focused control's text, label or value is ``name``."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate(FOCUSED_NAME) == name:
            return
    raise AssertionError(f"{name!r} cannot be reached with Tab")


FOCUSED_NAME = """() => {
    const e = document.activeElement;
    const label = e.labels && e.labels.length ? e.labels[0].firstChild.textContent : "";
    return (label || e.textContent || e.value || "").trim();
}"""


def test_sign_in_search_resend_and_approve_with_the_keyboard_alone(
    site, browser, signed_in, hl7_samples
):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "KEY-1"), "KEY-1", "failed")
    site.lab.code = "AA"
    page = browser.new_context(base_url=site.url).new_page()
    _sign_in_by_keyboard(page)

    _tab_to(page, "Messages")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Messages")).to_be_visible()
    _tab_to(page, "Control id (MSH-10)")
    page.keyboard.type("KEY-1")
    page.keyboard.press("Enter")
    expect(page.locator("tbody tr")).to_have_count(1)
    _tab_to(page, page.locator("tbody tr a").first.inner_text())
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile(r"Message \d+"))).to_be_visible()

    _tab_to(page, "Resend…")
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_label("Reason")).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("button", name="Resend…")).to_be_focused()
    page.keyboard.press("Enter")
    page.keyboard.type("lab back")
    _tab_to(page, "Resend")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Resent")
    expect(page.locator("#deliveries tbody tr").nth(1).locator(".status")).to_have_text("sent")
    page.context.close()

    alice = signed_in("alice")  # proposes a change, with the mouse
    alice.goto(f"/approvals/propose?channel={CHANNEL}")
    editor = alice.get_by_label("Channel file (YAML)")
    editor.fill(editor.input_value().replace("orders to the lab", "orders to lab 2"))
    alice.get_by_label("Reason").fill("rename")
    alice.get_by_role("button", name="Propose").click()
    expect(alice.get_by_role("status")).to_contain_text("Proposed")
    bob = browser.new_context(base_url=site.url).new_page()
    _sign_in_by_keyboard(bob, "bob")
    _tab_to(bob, "Approvals")
    bob.keyboard.press("Enter")
    expect(bob.get_by_role("heading", name="Approvals")).to_be_visible()
    _tab_to(bob, "Approve and deploy")
    bob.keyboard.press("Enter")
    expect(bob.get_by_role("status")).to_contain_text("Approved")
    bob.context.close()


WCAG_21_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def _violations(page: Page) -> list[str]:
    """axe-core's WCAG 2.1 A and AA violations on the page as it is now."""
    results = Axe().run(page, options=WCAG_21_AA)
    return [
        f"{page.url} {v['id']}: {node['target']}"
        for v in results.response["violations"]
        for node in v["nodes"]
    ]


def test_axe_finds_no_wcag_21_aa_violation_on_any_page(site, browser, signed_in, hl7_samples):
    """Every page and state a support engineer or an approver meets, a dialog open too."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "AXE-1"), "AXE-1", "failed")
    found: list[str] = []
    page = browser.new_context(base_url=site.url).new_page()
    page.goto("/login")
    found += _violations(page)
    page.context.close()

    sam = signed_in("sam")
    found += _violations(sam)
    for path in ("/messages", "/messages?since=yesterday", "/audit", "/messages/999999"):
        sam.goto(path)
        found += _violations(sam)
    sam.goto("/messages?control_id=AXE-1")
    found += _violations(sam)
    sam.get_by_role("button", name="Dry run").click()
    found += _violations(sam)
    sam.get_by_label("Reason").fill("lab back")
    sam.get_by_role("button", name="Confirm: resend 1 item(s)").click()
    expect(sam.get_by_role("status")).to_contain_text("resent")
    found += _violations(sam)
    sam.get_by_role("link", name=re.compile(r"^message \d+$")).click()
    sam.locator("#deliveries").wait_for()
    found += _violations(sam)
    sam.locator("#deliveries").get_by_role("button", name="Resend…").first.click()
    found += _violations(sam)

    alice = signed_in("alice")
    alice.goto(f"/approvals/propose?channel={CHANNEL}")
    found += _violations(alice)
    editor = alice.get_by_label("Channel file (YAML)")
    editor.fill(editor.input_value().replace("orders to the lab", "orders to lab 3"))
    alice.get_by_label("Reason").fill("rename")
    alice.get_by_role("button", name="Propose").click()
    expect(alice.get_by_role("status")).to_contain_text("Proposed")
    found += _violations(alice)
    assert found == []


def test_a_table_wider_than_the_window_scrolls_with_the_keyboard(site, signed_in, hl7_samples):
    """At 800 px the messages table scrolls in its box; its last columns (the error) have
    nothing to tab to, so the box itself takes the focus and the arrow keys scroll it."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "WIDE-1"), "WIDE-1", "failed")
    page = signed_in("sam")
    page.set_viewport_size({"width": 800, "height": 800})
    page.goto("/messages")
    box = page.get_by_role("region", name="Messages")
    assert box.evaluate("box => box.scrollWidth > box.clientWidth")
    _tab_to(page, page.locator("tbody tr a").first.inner_text())
    page.keyboard.press("Shift+Tab")
    expect(box).to_be_focused()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('.scroll').scrollLeft > 0", timeout=15_000)


def test_what_a_search_field_takes_stays_in_view_once_typed_in(site, signed_in):
    """WCAG 3.3.2: the format a time takes, and that a content search is audited, are part
    of the field's label, not a placeholder that vanishes at the first key."""
    page = signed_in("sam")
    page.goto("/messages")
    since = page.get_by_label("Since (UTC)")
    since.fill("7d")
    expect(since).to_have_accessible_name(re.compile(r"2h or 2026-05-01T09:00"))
    text = page.get_by_label("Text in content")
    text.fill("Smith")
    expect(text).to_have_accessible_name(re.compile("audited"))
    expect(page.get_by_text("last 24h unless Since; audited")).to_be_visible()
