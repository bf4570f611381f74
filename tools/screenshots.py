"""Screenshots of the console's main pages for the README, in ``docs/img/``.

    .venv/bin/python tools/screenshots.py

Starts an engine in a temporary folder (SQLite, governed mode) with the test lab, a few
users and messages (sent, failed, filtered, held, a proposed change), then photographs
the dashboard, the message browser, a message, the approvals inbox and the audit log
with Debian's chromium (the browser tests' setup, tests/browser/conftest.py).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from console_testing import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    PASSWORD,
    Site,
    order,
    start_site,
    stop_site,
)
from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402
from tie_testing import wait_until  # noqa: E402

from router import governance  # noqa: E402

OUT = ROOT / "docs" / "img"
SAMPLES = ROOT / "tests" / "data" / "hl7v2"
USERS = {"admin": ["admin"], "sam": ["support"], "alice": ["engineer"], "bob": ["approver"]}
RESULTS_YAML = """\
name: lab-results
description: results from the lab to the EPR
source:
  mllp:
    port: 0
filter:
  - field: MSH-9.1
    equals: ORU
destinations:
  epr:
    file:
      directory: {folder}/epr
"""
RELEASE_YAML = """\
name: gp-results
description: results to GP practices, released in reviewed batches
source:
  mllp:
    port: 0
destinations:
  practices:
    file:
      directory: {folder}/gp
    hold:
      approvals: 2
"""


def populate(site: Site, folder: Path) -> None:
    """Traffic on every channel, two failures, a held batch and a proposed change."""
    from hl7.client import MLLPClient

    oml = (SAMPLES / "OML_O21_nhs_nwgmsa_v251.hl7").read_bytes()
    oru = (SAMPLES / "ORU_R01_nhs_nwgmsa_v251.hl7").read_bytes()
    for n in range(1, 7):
        site.send_and_settle(order(oml, f"ORD-{n:04d}"), f"ORD-{n:04d}", "sent")
    site.lab.code = "AR"
    for n in (7, 8):
        site.send_and_settle(order(oml, f"ORD-{n:04d}"), f"ORD-{n:04d}", "failed")
    for channel, raws in (
        ("lab-results", [order(oru, f"RES-{n}") for n in range(3)] + [order(oml, "RES-X")]),
        ("gp-results", [order(oru, f"GP-{n}") for n in range(4)]),
    ):
        with MLLPClient("127.0.0.1", site.running.port(channel)) as client:
            for raw in raws:
                client.send_message(raw)
    wait_until(lambda: site.delivery_status("GP-3") == ["held"])
    store, config = site.running.store, site.running.engine.config
    text = (folder / "channels" / "lab-orders.yaml").read_text()
    governance.propose(
        store,
        config,
        "lab-orders",
        text.replace("orders to the lab", "orders to the genomics lab"),
        actor="alice",
        reason="name the genomics lab",
    )
    channels = {name: c.config for name, c in site.running.engine.channels.items()}
    governance.request_release(store, channels, "gp-results", "practices", actor="sam")


def shoot(page: Page, path: str, name: str, *, full: bool = True) -> None:
    page.goto(path)
    expect(page.locator("main h1")).to_be_visible()
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)
    print(OUT / f"{name}.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        channels = {
            "lab-results": RESULTS_YAML.format(folder=folder),
            "gp-results": RELEASE_YAML.format(folder=folder),
        }
        site = start_site(
            folder,
            f"sqlite:///{folder / 'tie.db'}",
            USERS,
            channels=channels,
            governance="governed",
        )
        try:
            populate(site, folder)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(base_url=site.url, viewport={"width": 1360, "height": 860})
                page.goto("/login")
                page.get_by_label("User name").fill("admin")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("heading", name="Channels")).to_be_visible()
                shoot(page, "/", "dashboard")
                shoot(page, "/messages", "messages")
                page.goto("/messages?control_id=ORD-0008")
                page.locator("tbody tr").first.get_by_role("link").click()
                expect(page.locator("#raw")).to_be_visible()
                shoot(page, page.url, "message", full=False)
                shoot(page, "/approvals", "approvals")
                page.goto("/audit")
                page.get_by_role("button", name="Verify chain").click()
                expect(page.get_by_role("status")).to_contain_text("Chain intact")
                page.screenshot(path=str(OUT / "audit.png"))
                browser.close()
        finally:
            stop_site(site)


if __name__ == "__main__":
    main()
