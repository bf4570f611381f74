"""The users page in a real browser: only an admin finds it; roles, disable, token
revocation, adding a user and issuing a token (shown once: a reload shows the Users page)
through its dialogs, each with a reason; no WCAG 2.1 AA violation (axe)."""

from __future__ import annotations

import re

from console_testing import PASSWORD
from playwright.sync_api import expect
from test_console_accessibility import _violations

from router.auth.tokens import issue_token
from router.auth.users import add_user


def test_an_admin_changes_roles_disables_and_revokes_from_the_users_page(site, signed_in):
    with site.running.store.begin() as conn:
        add_user(conn, "ada", ["admin"], PASSWORD, actor="test")
        add_user(conn, "gp", ["sender"], None, actor="test")
        token_id, _ = issue_token(conn, "gp", ["sender"], actor="ada")

    sam = signed_in("sam")
    nav = sam.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Audit log")).to_be_visible()
    expect(nav.get_by_role("link", name="Users")).to_have_count(0)
    sam.goto("/users")
    expect(sam.get_by_role("alert")).to_contain_text("needs the role admin")

    ada = signed_in("ada")
    ada.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
    expect(ada.get_by_role("heading", name="Users", level=1)).to_be_visible()
    found = _violations(ada)
    token_row = ada.locator(f'tr[data-token="{token_id}"]')
    expect(token_row).to_contain_text("ada")  # its issuer
    expect(token_row).to_contain_text("not recorded")  # never used

    ada.get_by_role("button", name="Roles… of sam").click()
    dialog = ada.get_by_role("dialog", name="Change the roles of sam")
    expect(dialog).to_be_visible()
    found += _violations(ada)
    dialog.get_by_label("approver").check()
    dialog.get_by_role("button", name="Change roles").click()
    expect(dialog.get_by_label("Reason")).to_be_focused()  # required: the form waits for it
    dialog.get_by_label("Reason").fill("joins the approvers rota")
    dialog.get_by_role("button", name="Change roles").click()
    expect(ada.get_by_role("status")).to_contain_text("Changed the roles of sam")
    expect(ada.locator('tr[data-user="sam"]')).to_contain_text("approver, support")

    ada.get_by_role("button", name="Disable… sam").click()
    dialog = ada.get_by_role("dialog", name="Disable sam")
    dialog.get_by_label("Reason").fill("left the trust")
    dialog.get_by_role("button", name="Disable").click()
    expect(ada.get_by_role("status")).to_contain_text("Disabled sam")
    expect(ada.get_by_role("button", name="Enable… sam")).to_be_visible()

    ada.get_by_role("button", name=f"Revoke… token {token_id} of gp").click()
    dialog = ada.get_by_role("dialog", name=f"Revoke token {token_id} of gp")
    dialog.get_by_label("Reason").fill("rotated")
    dialog.get_by_role("button", name="Revoke").click()
    expect(ada.get_by_role("status")).to_contain_text(f"Revoked token {token_id}.")
    found += _violations(ada)

    ada.get_by_role("button", name="Add user…").click()
    dialog = ada.get_by_role("dialog", name="Add a user")
    dialog.get_by_label("Name").fill("Ada")  # taken, but for its case
    dialog.get_by_label("sender").check()
    dialog.get_by_label("No password").check()
    dialog.get_by_label("Reason").fill("PAS feed")
    dialog.get_by_role("button", name="Add user").click()
    expect(dialog.get_by_role("alert")).to_contain_text("exists as 'ada'")  # open again
    expect(dialog.get_by_label("Reason")).to_have_value("PAS feed")
    found += _violations(ada)
    dialog.get_by_label("Name").fill("pas")
    dialog.get_by_role("button", name="Add user").click()
    expect(ada.get_by_role("status")).to_contain_text("Added pas.")

    ada.get_by_role("button", name="Issue token… for pas").click()
    dialog = ada.get_by_role("dialog", name="Issue a token for pas")
    found += _violations(ada)
    dialog.get_by_label("sender").check()
    dialog.get_by_label("Expires after").fill("90d")
    dialog.get_by_label("Reason").fill("PAS go-live")
    dialog.get_by_role("button", name="Issue token").click()
    secret = ada.get_by_label("Token", exact=True)
    expect(secret).to_have_value(re.compile(r"^tie_"))
    found += _violations(ada)
    assert ada.url.endswith("/users"), "its history entry is the Users page"
    ada.reload()
    expect(ada.get_by_role("heading", name="Users", level=1)).to_be_visible()
    expect(ada.get_by_label("Token", exact=True)).to_have_count(0)
    assert found == []
    ada.set_viewport_size({"width": 320, "height": 800})  # 400% zoom: only tables scroll
    assert ada.evaluate("document.documentElement.scrollWidth") <= 320
