"""The console over HTTP (no browser): what each role sees, audited views, replays, the
dashboard's figures and the bulk dry run. Browser flows are in tests/browser/."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from console_testing import (
    CHANNEL,
    Site,
    csrf_of,
    order,
    running_site,
    sign_in,
)
from sqlalchemy import select
from tie_testing import wait_until

from router import cancel, governance
from router.connectors.hl7_inbound import hl7_inbound
from router.store.inbound import write_inbound
from router.store.queries import PREVIEW
from router.store.schema import audit_events, deliveries, messages

OML = "OML_O21_nhs_nwgmsa_v251"
USERS = {"vic": ["viewer"], "sam": ["support"], "ada": ["admin"]}


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, USERS) as running:
        yield running


def _events(site: Site, action: str) -> list[tuple[str, str]]:
    with site.running.store.read() as conn:
        rows = conn.execute(
            select(audit_events.c.actor, audit_events.c.target).where(
                audit_events.c.action == action
            )
        )
        return [tuple(r) for r in rows]


def _details(site: Site, action: str) -> list[tuple[str, dict]]:
    with site.running.store.read() as conn:
        rows = conn.execute(
            select(audit_events.c.actor, audit_events.c.details)
            .where(audit_events.c.action == action)
            .order_by(audit_events.c.id)
        )
        return [(actor, json.loads(details)) for actor, details in rows]


def test_pages_need_a_session_and_static_files_do_not(site):
    import httpx

    with httpx.Client(base_url=site.url) as anonymous:
        answer = anonymous.get("/messages?status=error")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=/messages%3Fstatus%3Derror"
        htmx = anonymous.get("/static/htmx.min.js")
        assert htmx.status_code == 200 and "htmx" in htmx.text


def test_viewer_sees_metadata_and_support_sees_audited_content(site, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "CONS-1"), "CONS-1", "sent")
    viewer, support = sign_in(site.url, "vic"), sign_in(site.url, "sam")

    listing = viewer.get("/messages", params={"control_id": "CONS-1"})
    assert listing.status_code == 200
    message_id = re.search(r'href="/messages/(\d+)"', listing.text).group(1)

    metadata = viewer.get(f"/messages/{message_id}")
    assert metadata.status_code == 200
    assert "CONS-1" in metadata.text and "CHISLETT" not in metadata.text
    assert "shown to the <strong>support</strong> role only" in metadata.text
    assert _events(site, "view") == []

    content = support.get(f"/messages/{message_id}")
    assert "CHISLETT" in content.text
    assert '<td class="field">PID-5</td>' in content.text
    assert "content-security-policy" in content.headers
    assert [actor for actor, _ in _events(site, "view")] == ["sam"]

    refused = viewer.post(f"/messages/{message_id}/reprocess", data={"reason": "x"})
    assert refused.status_code == 403

    # Metadata too: which sender delivered a message over TLS, by its client certificate.
    source = {
        "protocol": "mllp",
        "remote": "10.1.2.3:40001",
        "tls": "TLSv1.3",
        "client_subject": "CN=lab <1>,O=Trust",
        "client_issuer": "CN=Trust CA",
        "client_serial": "1F2E",
        "client_sha256": "AB:CD",
    }
    item = hl7_inbound(CHANNEL, order(hl7_samples[OML], "CONS-TLS"), source=source)
    with site.running.store.begin() as conn:
        write_inbound(conn, [item])
        message_id = conn.scalar(select(messages.c.id).where(messages.c.uuid == item.uuid))
    page = viewer.get(f"/messages/{message_id}")
    assert page.status_code == 200
    text = html.unescape(re.sub(r"<[^>]+>", " ", page.text))
    assert re.search(r"From\s+10\.1\.2\.3:40001\s+\(mllp over TLSv1\.3\)", text)
    expected = r"Client certificate\s+CN=lab <1>,O=Trust\s+issuer\s+CN=Trust CA\s+serial\s+1F2E"
    assert re.search(expected + r"\s+SHA-256\s+AB:CD", text)
    assert "CN=lab <1>" not in page.text  # escaped


def test_a_large_message_page_shows_the_head_of_its_content_not_all_of_it(site, hl7_samples):
    tail = b"NTE|1||" + b"x" * (8 * PREVIEW) + b"|END-OF-MESSAGE"
    big = order(hl7_samples[OML], "CONS-BIG").rstrip(b"\r") + b"\r" + tail
    site.send_and_settle(big, "CONS-BIG", "sent")
    support = sign_in(site.url, "sam")
    listing = support.get("/messages", params={"control_id": "CONS-BIG"})
    message_id = re.search(r'href="/messages/(\d+)"', listing.text).group(1)

    page = support.get(f"/messages/{message_id}")

    assert page.status_code == 200 and "CHISLETT" in page.text
    assert "END-OF-MESSAGE" not in page.text
    assert f"Showing the first {PREVIEW} characters of {len(big)} bytes." in page.text
    assert page.text.count(f"of {len(big)} bytes.") == 2  # the message and the lab's copy
    assert len(page.content) < len(big)
    links = re.findall(r'href="(/(?:messages|deliveries)/\d+/(?:raw|payload))" download', page.text)
    assert links[0] == f"/messages/{message_id}/raw" and len(links) == 2
    for link in links:
        whole = support.get(link)
        assert whole.status_code == 200 and whole.content == big
        assert whole.headers["content-disposition"].startswith("attachment;")
    assert [actor for actor, _ in _events(site, "view")] == ["sam", "sam", "sam"]
    assert sign_in(site.url, "vic").get(links[0]).status_code == 403


def test_forms_without_the_csrf_token_are_refused(site, hl7_samples):
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "CONS-2"), "CONS-2", "failed")
    support = sign_in(site.url, "sam")
    page = support.get("/messages", params={"control_id": "CONS-2", "delivery": "failed"})
    message_id = re.search(r'href="/messages/(\d+)"', page.text).group(1)
    detail = support.get(f"/messages/{message_id}")
    delivery = re.search(r'data-delivery="(\d+)"', detail.text).group(1)

    missing = support.post(f"/deliveries/{delivery}/resend", data={"reason": "lab fixed"})
    assert missing.status_code == 403
    assert _events(site, "resend") == []

    site.lab.code = "AA"
    token = csrf_of(detail.text)
    no_reason = support.post(f"/deliveries/{delivery}/resend", data={"csrf_token": token})
    assert no_reason.status_code == 400
    done = support.post(
        f"/deliveries/{delivery}/resend", data={"csrf_token": token, "reason": "lab fixed"}
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/messages/{message_id}?done=resent"
    wait_until(lambda: site.delivery_status("CONS-2") == ["resent", "sent"])
    assert [actor for actor, _ in _events(site, "resend")] == ["sam"]


def test_a_delivery_still_to_be_sent_is_not_resent_from_the_console(site, hl7_samples):
    """The dispatcher still sends a retrying delivery, so its resend would send it twice:
    the preview says so, and resending it is a page with the reason, not a 500."""
    site.lab.code = "AE"
    site.send(order(hl7_samples[OML], "BUSY-1"))
    wait_until(lambda: site.delivery_status("BUSY-1") == ["retrying"])
    support = sign_in(site.url, "sam")
    page = support.get("/messages", params={"control_id": "BUSY-1"})
    message_id = re.search(r'href="/messages/(\d+)"', page.text).group(1)
    detail = support.get(f"/messages/{message_id}")
    delivery = re.search(r'data-delivery="(\d+)"', detail.text).group(1)
    token = {"csrf_token": csrf_of(detail.text)}
    assert f'data-dialog="resend-{delivery}"' not in detail.text, "no Resend button offered"

    preview = support.post(f"/deliveries/{delivery}/resend/preview", data=token)
    refused = support.post(f"/deliveries/{delivery}/resend", data={**token, "reason": "x"})

    assert f"would not resend delivery {delivery} (" in html.unescape(preview.text)
    assert refused.status_code == 409
    assert "it will still be sent, so a resend would send it twice" in html.unescape(refused.text)
    assert len(site.delivery_status("BUSY-1")) == 1
    assert _events(site, "resend") == []


def test_console_errors_are_pages_in_the_layout_and_api_errors_stay_json(site):
    """A refusal or a missing page reads as a page with the reason and the navigation back,
    never FastAPI's JSON; the API keeps its JSON answers."""
    support, admin = sign_in(site.url, "sam"), sign_in(site.url, "ada")
    token, admin_token = csrf_of(support.get("/").text), csrf_of(admin.get("/").text)
    answers = {
        404: support.get("/messages/999999"),
        400: support.post("/messages/bulk/preview", data={"csrf_token": token, "action": "x"}),
        405: support.get("/logout"),
        403: support.post("/channels/lab-orders/pause", data={"reason": "no token"}),
        422: admin.post("/approvals/propose", data={"csrf_token": admin_token}),
    }
    for status, answer in answers.items():
        assert answer.headers["content-type"].startswith("text/html"), (status, answer.text)
        assert 'role="alert"' in answer.text and 'href="/messages"' in answer.text, status
        assert "content-security-policy" in answer.headers
    assert answers[404].status_code == 404 and "No message 999999" in answers[404].text
    assert answers[400].status_code == 400 and "Unknown action" in answers[400].text
    assert answers[405].status_code == 405
    assert answers[403].status_code == 403 and "CSRF token" in answers[403].text
    assert answers[422].status_code == 400
    assert "The form was not complete: channel: Field required" in answers[422].text

    unknown = httpx.get(f"{site.url}/no-such-page")
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("text/html")
    assert 'href="/login"' in unknown.text and 'href="/messages"' not in unknown.text
    api = support.get("/api/messages/999999")
    assert api.status_code == 404 and api.json() == {"detail": "no message 999999"}


HUGE = "9" * 25  # past any database integer


def test_out_of_range_numbers_get_a_page_never_a_500(site, hl7_samples, monkeypatch):
    """A number the store cannot hold, a digit int() refuses ("²") or an age before the year 1
    is a miss or a problem named on the page; an unexpected error is the error page."""
    site.send_and_settle(order(hl7_samples[OML], "BOUND-1"), "BOUND-1", "sent")
    ada = sign_in(site.url, "ada")
    for before in (HUGE, "%C2%B2"):  # an unusable cursor is no cursor
        assert "BOUND-1" in ada.get(f"/messages?before={before}").text
        assert "BOUND-1" in ada.get(f"/messages/rows?before={before}").text
        assert "login" in ada.get(f"/audit?before={before}").text
    token = csrf_of(ada.get("/").text)
    for answer, code in (
        (ada.get(f"/messages/{HUGE}"), 404),
        (ada.get("/messages/%C2%B2"), 404),
        (ada.get(f"/messages/{HUGE}/deliveries"), 400),
        (ada.post(f"/approvals/holds/{HUGE}/approve", data={"csrf_token": token}), 400),
    ):
        path = answer.request.url.path
        assert answer.status_code == code, (path, answer.status_code)
        assert answer.headers["content-type"].startswith("text/html"), path
    too_long_ago = ada.get("/messages", params={"since": "9" * 30 + "s"})
    assert too_long_ago.status_code == 200 and "since: give an ISO time" in too_long_ago.text
    assert "is too long ago" in ada.get("/audit", params={"since": "9" * 30 + "s"}).text

    def broken(*_: object) -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("router.console.messages.page", broken)
    answer = ada.get("/messages")
    assert answer.status_code == 500 and answer.headers["content-type"].startswith("text/html")
    assert 'role="alert"' in answer.text and "secret detail" not in answer.text


def test_dashboard_counts_failures_first_and_pause_resume(site, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "CONS-3"), "CONS-3", "sent")
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "CONS-4"), "CONS-4", "failed")
    support = sign_in(site.url, "sam")

    page = support.get("/")
    assert page.status_code == 200
    row = re.search(r'<tr class="attention">(.*?)</tr>', page.text, re.S).group(1)
    cells = re.findall(r'<td class="num">(.*?)</td>', row, re.S)
    # received in the last hour, 24 h; filtered hour, 24 h; sent hour, 24 h; failed hour
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells[:7]] == [
        "2",
        "2",
        "0",
        "0",
        "1",
        "1",
        "1",
    ]
    assert f"/messages?channel={CHANNEL}&delivery=failed" in row
    assert "lab: " in row  # the last error names the destination

    token = csrf_of(page.text)
    assert f'action="/channels/{CHANNEL}/pause"' in page.text
    assert "Reason (optional, kept in the audit log)" in page.text
    paused = support.post(
        f"/channels/{CHANNEL}/pause", data={"csrf_token": token, "reason": "lab maintenance"}
    )
    assert paused.status_code == 303
    assert f'action="/channels/{CHANNEL}/resume"' in support.get("/").text
    support.post(f"/channels/{CHANNEL}/resume", data={"csrf_token": token})
    assert f'action="/channels/{CHANNEL}/pause"' in support.get("/").text
    assert _details(site, "pause") == [("sam", {"reason": "lab maintenance"})]
    assert _details(site, "resume") == [("sam", {"reason": ""})]


def test_dashboard_counts_cancelled_deliveries_and_links_to_them(site, hl7_samples):
    """A cancelled delivery is finished, not failed or queued: the dashboard counts it in
    its own column, linked to the search that lists the messages with one."""
    site.lab.code = "AE"  # the lab is busy: the delivery waits to be tried again
    site.send(order(hl7_samples[OML], "CANCEL-1"))
    wait_until(lambda: site.delivery_status("CANCEL-1") == ["retrying"])
    store = site.running.store
    with store.read() as conn:
        [delivery] = conn.scalars(
            select(deliveries.c.id)
            .join(messages, messages.c.id == deliveries.c.message_id)
            .where(messages.c.control_id == "CANCEL-1")
        )

    def cancelled() -> bool:
        """Cancel it, or try again while an attempt is being sent (``sending``)."""
        try:
            cancel.cancel(store, delivery, reason="wrong ward", actor="sam")
        except cancel.NotCancellable as refused:
            assert refused.status == "sending"
            return False
        return True

    wait_until(cancelled)
    viewer = sign_in(site.url, "vic")

    page = viewer.get("/").text
    assert re.search(r"<th[^>]*>Cancelled</th>", page)
    row = re.search(r"<tr class=\"\">(.*?)</tr>", page, re.S).group(1)
    cells = re.findall(r'<td class="num">(.*?)</td>', row, re.S)
    link = f'<a href="/messages?channel={CHANNEL}&delivery=cancelled">1</a>'
    assert cells[-1] == link  # after queued 0 and held 0
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells[-3:-1]] == ["0", "0"]
    listed = viewer.get(f"/messages?channel={CHANNEL}&delivery=cancelled")
    assert "CANCEL-1" in listed.text


def test_bulk_resend_lists_first_then_acts_on_what_was_listed(site, hl7_samples):
    site.lab.code = "AR"
    for n in (5, 6):
        site.send_and_settle(order(hl7_samples[OML], f"CONS-{n}"), f"CONS-{n}", "failed")
    site.lab.code = "AA"
    support = sign_in(site.url, "sam")
    listing = support.get("/messages").text
    token = csrf_of(listing)
    newest = re.search(r'href="/messages/(\d+)"', listing).group(1)
    older = support.get("/messages/rows", params={"channel": CHANNEL, "before": newest}).text
    assert "CONS-5" in older and "CONS-6" not in older and "<html" not in older

    search = {"channel": CHANNEL, "delivery": "failed", "csrf_token": token}
    preview = support.post("/messages/bulk/preview", data={**search, "action": "resend"})
    assert preview.status_code == 200
    assert preview.text.count("would resend delivery") == 2
    assert _events(site, "resend") == []
    ids = re.search(r'name="ids" value="([\d,]+)"', preview.text).group(1)

    done = support.post(
        "/messages/bulk",
        data={"csrf_token": token, "action": "resend", "ids": ids, "reason": "lab back"},
    )
    assert done.status_code == 303  # post/redirect/get: a reload shows, never acts again
    for _ in range(2):
        result = support.get(done.headers["location"])
        assert "2 item(s) resent" in result.text and "Reason: “lab back”" in result.text
    assert len(_events(site, "resend")) == 2
    wait_until(lambda: site.delivery_status("CONS-5") == ["resent", "sent"])
    wait_until(lambda: site.delivery_status("CONS-6") == ["resent", "sent"])
    repeat = support.post("/messages/bulk/preview", data={**search, "action": "resend"})
    assert repeat.status_code == 200 and "would resend delivery" not in repeat.text


def test_a_bulk_reprocess_sent_twice_acts_once_and_shows_the_first(site, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "TWICE-1"), "TWICE-1", "sent")
    support = sign_in(site.url, "sam")
    token = csrf_of(support.get("/messages").text)
    search = {"channel": CHANNEL, "csrf_token": token, "action": "reprocess"}
    preview = support.post("/messages/bulk/preview", data=search).text
    form = {
        "csrf_token": token,
        "form_nonce": re.search(r'name="form_nonce" value="([^"]+)"', preview).group(1),
        "action": "reprocess",
        "ids": re.search(r'name="ids" value="([\d,]+)"', preview).group(1),
        "reason": "mapping fixed",
    }
    first = support.post("/messages/bulk", data=form)
    again = support.post("/messages/bulk", data=form)
    assert first.status_code == 303
    assert len(_events(site, "reprocess")) == 1
    assert again.status_code == 409 and "Nothing was done again" in again.text
    link = re.search(r'<a href="([^"]+)">See what the first', again.text).group(1)
    assert html.unescape(link) == first.headers["location"]


def test_audit_page_pages_and_verifies_the_chain(site):
    support = sign_in(site.url, "sam")
    page = support.get("/audit", params={"actor": "test"})
    assert page.status_code == 200
    assert page.text.count(">user-add<") == len(USERS)
    verdict = support.get("/audit/verify", headers={"HX-Request": "true"})
    assert "Chain intact" in verdict.text
    newest = re.search(
        r"The newest, #(\d+), has the hash <code>([0-9a-f]{64})</code>", verdict.text
    )
    assert newest is not None, verdict.text
    with site.running.store.read() as conn:
        kept = conn.scalar(select(audit_events.c.hash).where(audit_events.c.id == int(newest[1])))
    assert kept == newest[2]
    assert sign_in(site.url, "vic").get("/audit").status_code == 403


HELD_YAML = """\
name: release
source:
  mllp:
    port: 0
destinations:
  archive:
    file:
      directory: {folder}
    hold:
      approvals: 2
"""


def test_a_held_batch_is_requested_then_released_by_two_other_approvers(
    tmp_path, store_url, hl7_samples
):
    from hl7.client import MLLPClient

    from router.store.schema import deliveries

    folder = tmp_path / "archive"
    users = {"sam": ["support"], "bob": ["approver"], "cat": ["approver"]}
    channels = {"release": HELD_YAML.format(folder=folder)}
    with running_site(tmp_path, store_url, users, channels=channels) as site:
        raw = order(hl7_samples[OML], "HELD-1")
        with MLLPClient("127.0.0.1", site.running.port("release")) as client:
            client.send_message(raw)

        def held() -> list[str]:
            with site.running.store.read() as conn:
                return list(conn.scalars(select(deliveries.c.status)))

        wait_until(lambda: held() == ["held"])
        sam, bob, cat = (sign_in(site.url, n) for n in ("sam", "bob", "cat"))
        inbox = sam.get("/approvals")
        assert "release → archive: not yet requested" in inbox.text
        requested = sam.post(
            "/approvals/holds/release/archive/request", data={"csrf_token": csrf_of(inbox.text)}
        )
        assert requested.status_code == 303

        page = bob.get("/approvals")
        batch = re.search(r'action="/approvals/holds/(\d+)/approve"', page.text).group(1)
        assert "OML^O21" in page.text  # the summary by message type
        bob.post(f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)})
        again = bob.post(
            f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)}
        )
        assert again.status_code == 403 and "approved batch" in again.text
        assert held() == ["held"]
        page = cat.get("/approvals")
        cat.post(f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)})
        wait_until(lambda: held() == ["sent"])
        assert len(list(folder.iterdir())) == 1
        decided = cat.get("/approvals").text
        row = re.search(rf'<tr data-batch="{batch}">(.*?)</tr>', decided, re.S).group(1)
        assert "released" in row and "bob, cat" in row


def test_a_batch_released_in_the_console_is_sent_at_once(tmp_path, store_url, hl7_samples):
    """The dispatcher polls only every ten minutes here: the released delivery goes out
    because the console woke it, as the API does."""
    from hl7.client import MLLPClient

    from router.store.schema import deliveries

    folder = tmp_path / "archive"
    users = {"sam": ["support"], "bob": ["approver"], "cat": ["approver"]}
    channels = {"release": HELD_YAML.format(folder=folder)}
    slow_poll = {"poll_interval": "600s", "lease": "30s"}
    with running_site(tmp_path, store_url, users, channels=channels, dispatch=slow_poll) as site:
        with MLLPClient("127.0.0.1", site.running.port("release")) as client:
            client.send_message(order(hl7_samples[OML], "WAKE-1"))

        def statuses() -> list[str]:
            with site.running.store.read() as conn:
                return list(conn.scalars(select(deliveries.c.status)))

        wait_until(lambda: statuses() == ["held"])
        sam, bob, cat = (sign_in(site.url, n) for n in ("sam", "bob", "cat"))
        token = csrf_of(sam.get("/approvals").text)
        sam.post("/approvals/holds/release/archive/request", data={"csrf_token": token})
        page = bob.get("/approvals")
        batch = re.search(r'action="/approvals/holds/(\d+)/approve"', page.text).group(1)
        bob.post(f"/approvals/holds/{batch}/approve", data={"csrf_token": csrf_of(page.text)})
        token = csrf_of(cat.get("/approvals").text)
        cat.post(f"/approvals/holds/{batch}/approve", data={"csrf_token": token})
        wait_until(lambda: statuses() == ["sent"])


def test_a_rejected_batch_is_named_and_listed_with_who_rejected_it_and_why(
    tmp_path, store_url, hl7_samples
):
    from hl7.client import MLLPClient

    users = {"sam": ["support"], "bob": ["approver"]}
    channels = {"release": HELD_YAML.format(folder=tmp_path / "archive")}
    with running_site(tmp_path, store_url, users, channels=channels) as site:
        with MLLPClient("127.0.0.1", site.running.port("release")) as client:
            client.send_message(order(hl7_samples[OML], "HELD-2"))
        sam, bob = sign_in(site.url, "sam"), sign_in(site.url, "bob")
        wait_until(lambda: "not yet requested" in sam.get("/approvals").text)
        assert "No batch has been released or rejected." in sam.get("/approvals").text
        token = csrf_of(sam.get("/approvals").text)
        requested = sam.post("/approvals/holds/release/archive/request", data={"csrf_token": token})
        batch = re.search(r"batch=(\d+)", requested.headers["location"]).group(1)
        assert f"Release of batch #{batch} requested" in sam.get(requested.headers["location"]).text

        token = csrf_of(bob.get("/approvals").text)
        bare = bob.post(f"/approvals/holds/{batch}/reject", data={"csrf_token": token})
        assert bare.status_code == 422  # an incomplete form, not a batch in the wrong state
        assert "a rejection needs a reason, and none was given" in bare.text
        rejected = bob.post(
            f"/approvals/holds/{batch}/reject",
            data={"csrf_token": token, "reason": "wrong <practice> list"},
        )
        assert rejected.status_code == 303
        page = bob.get(rejected.headers["location"]).text
        assert f"Rejected batch #{batch}: its deliveries are cancelled." in page
        row = re.search(rf'<tr data-batch="{batch}">(.*?)</tr>', page, re.S).group(1)
        assert "rejected" in row and ">bob<" in row and ">sam<" in row
        assert "wrong &lt;practice&gt; list" in row


def test_a_notice_names_only_a_channel_or_a_number(site):
    viewer = sign_in(site.url, "vic")
    page = viewer.get(
        "/approvals", params={"done": "rejected", "channel": "<b>Call 0800</b>", "number": "x"}
    )
    assert "Rejected ? #?." in page.text and "0800" not in page.text


GOVERNED_USERS = {"erin": ["engineer"], "ada": ["approver"], "vic": ["viewer"]}


@pytest.fixture
def governed(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, GOVERNED_USERS, governance="governed") as running:
        yield running


def test_a_refused_proposal_keeps_the_edited_text_and_says_why(governed):
    erin = sign_in(governed.url, "erin")
    form = erin.get("/approvals/propose", params={"channel": CHANNEL})
    token, text = csrf_of(form.text), _textarea(form.text)
    assert "description: orders to the lab" in text

    broken = text + "  <script>alert(1)</script>: [\n"
    invalid = erin.post(
        "/approvals/propose",
        data={"csrf_token": token, "channel": CHANNEL, "text": broken, "reason": "try <b>"},
    )
    assert invalid.status_code == 422
    assert 'role="alert">Refused:' in invalid.text
    assert _textarea(invalid.text) == broken
    assert "<script>alert(1)" not in invalid.text and 'value="try &lt;b&gt;"' in invalid.text

    unchanged = erin.post(
        "/approvals/propose",
        data={"csrf_token": token, "channel": CHANNEL, "text": text, "reason": "same"},
    )
    assert unchanged.status_code == 409
    assert "no change from the running revision #1" in unchanged.text
    assert _textarea(unchanged.text) == text
    assert governance.list_revisions(governed.running.store, CHANNEL) == [
        governance.get_revision(governed.running.store, CHANNEL, 1)
    ]


def test_roll_back_to_an_earlier_revision_proposes_it_again_for_approval(governed):
    store = governed.running.store
    erin, ada, vic = (sign_in(governed.url, n) for n in ("erin", "ada", "vic"))
    form = erin.get("/approvals/propose", params={"channel": CHANNEL})
    changed = _textarea(form.text).replace("orders to the lab", "orders to the genomics lab")
    proposed = erin.post(
        "/approvals/propose",
        data={"csrf_token": csrf_of(form.text), "channel": CHANNEL, "text": changed, "reason": "x"},
    )
    assert proposed.headers["location"] == (f"/approvals?done=proposed&channel={CHANNEL}&number=2")
    token = csrf_of(ada.get("/approvals").text)
    ada.post(f"/approvals/revisions/{CHANNEL}/2/approve", data={"csrf_token": token})

    page = erin.get("/approvals").text
    assert "Roll back to #1…" in page and "Roll back to #2" not in page  # #2 runs
    assert "Roll back to" not in vic.get("/approvals").text
    refused = vic.post(
        f"/approvals/revisions/{CHANNEL}/1/rollback",
        data={"csrf_token": csrf_of(page), "reason": "no"},
    )
    assert refused.status_code == 403

    rolled = erin.post(
        f"/approvals/revisions/{CHANNEL}/1/rollback",
        data={"csrf_token": csrf_of(page), "reason": "genomics lab not live yet"},
    )
    assert rolled.status_code == 303
    shown = erin.get(rolled.headers["location"]).text
    assert f"Proposed {CHANNEL} #3, a rollback: it waits for another person" in shown
    revision = governance.get_revision(store, CHANNEL, 3)
    assert revision.state == "proposed" and revision.author == "erin"
    assert revision.yaml == governance.get_revision(store, CHANNEL, 1).yaml
    assert revision.reason == "genomics lab not live yet"

    own = erin.post(f"/approvals/revisions/{CHANNEL}/3/approve", data={"csrf_token": token})
    assert own.status_code == 403  # an engineer is no approver; four eyes in any case
    approved = ada.post(f"/approvals/revisions/{CHANNEL}/3/approve", data={"csrf_token": token})
    assert approved.headers["location"] == f"/approvals?done=approved&channel={CHANNEL}&number=3"
    assert f"Approved {CHANNEL} #3." in ada.get(approved.headers["location"]).text


def _textarea(page: str) -> str:
    found = re.search(r'<textarea name="text"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, page
    return html.unescape(found.group(1))


def test_the_jobs_page_names_undelivered_outputs_and_support_closes_a_failed_job(site):
    """A failure email refused shows on its job whatever the status; closing needs support,
    a reason, and a failed status or an undelivered output, and is audited."""
    from router.store.inbound import utcnow
    from router.store.schema import jobs

    undelivered = [
        {"delivery_id": 7, "destination": "failure-email", "error": "550 5.1.1 no such mailbox"}
    ]
    with site.running.store.begin() as conn:
        states = (
            ("job-v", "failed_dps_validation"),
            ("job-o", "failed_outputs"),
            ("job-c", "completed"),
            ("job-w", "sent_to_dps"),
        )
        for job_id, job_status in states:
            marks = json.dumps([{**undelivered[0], "original": 7}]) if job_id == "job-v" else None
            then = utcnow() - timedelta(days=2)  # long past the default 24h for DPS's answer
            conn.execute(
                jobs.insert().values(
                    job_id=job_id, status=job_status, undelivered=marks, updated_at=then
                )
            )
    viewer, support = sign_in(site.url, "vic"), sign_in(site.url, "sam")
    page = viewer.get("/jobs")
    assert page.status_code == 200
    assert "failure-email #7" in page.text and "550 5.1.1 no such mailbox" in page.text
    waiting = re.search(r"<tr[^>]*>\s*<th[^>]*><a[^>]*>job-w<.*?</tr>", page.text, re.S)
    assert waiting and "Overdue: no answer from DPS for 2d" in waiting.group(0)
    assert page.text.count("Overdue: ") == 1, "only the job still waiting for DPS"
    assert "/jobs/job-o/close" not in page.text, "a viewer is not offered the close"
    assert viewer.post("/jobs/job-o/close", data={"reason": "x"}).status_code == 403

    page = support.get("/jobs")
    assert "/jobs/job-o/close" in page.text and "/jobs/job-v/close" in page.text
    assert "/jobs/job-c/close" not in page.text
    token = csrf_of(page.text)
    refused = support.post("/jobs/job-c/close", data={"reason": "x", "csrf_token": token})
    assert refused.status_code == 409
    assert "Job job-c is completed" in html.unescape(refused.text)
    empty = support.post("/jobs/job-o/close", data={"reason": " ", "csrf_token": token})
    assert empty.status_code == 400
    closed = support.post(
        "/jobs/job-o/close", data={"reason": "CSV sent from the archive", "csrf_token": token}
    )
    assert closed.status_code == 303 and closed.headers["location"] == "/jobs?closed=1"
    page = support.get("/jobs?closed=1")
    assert "The job is closed." in page.text
    assert "closed by sam (was failed_outputs): CSV sent from the archive" in page.text
    support.post("/jobs/job-v/close", data={"reason": "told by phone", "csrf_token": token})
    page = support.get("/jobs")
    closed_row = re.search(r"<tr[^>]*>\s*<th[^>]*><a[^>]*>job-v<.*?</tr>", page.text, re.S)
    assert closed_row, page.text
    assert "closed by sam (was failed_dps_validation): told by phone" in closed_row.group(0)
    assert "failure-email #7" in closed_row.group(0), "what kept it open"
    assert _details(site, "job.close") == [
        ("sam", {"reason": "CSV sent from the archive", "from": "failed_outputs", "error": None}),
        (
            "sam",
            {
                "reason": "told by phone",
                "from": "failed_dps_validation",
                "error": None,
                "undelivered": [{**undelivered[0], "original": 7}],
            },
        ),
    ]


def test_a_message_page_names_the_channel_revision_that_processed_it(site, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "REV-1"), "REV-1", "sent")
    viewer = sign_in(site.url, "vic")
    listing = viewer.get("/messages", params={"control_id": "REV-1"})
    message_id = re.search(r'href="/messages/(\d+)"', listing.text).group(1)
    [revision] = governance.list_revisions(site.running.store, CHANNEL)
    page = viewer.get(f"/messages/{message_id}")
    assert f"<dt>Revision</dt><dd>{CHANNEL} #{revision.number}</dd>" in page.text
