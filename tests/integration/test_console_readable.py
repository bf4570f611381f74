"""The console read by a support engineer at 3 a.m.: errors, times and content shown so
that they say what happened at a glance (over HTTP, no browser)."""

from __future__ import annotations

import contextlib
import html
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from console_testing import FEED_YAML, Site, csrf_of, running_site, sign_in
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import free_ports, wait_until

from router.store.schema import messages

USERS = {"sam": ["support"]}
WARD_MAPPING = """\
WARDS = {"W1": "Ward 1"}


def normalise(message):
    for segment in message.raw.split(b"\\r"):
        if segment.startswith(b"PV1|"):
            WARDS[segment.split(b"|")[3].decode()]
    return message.raw
"""
ADT_YAML = """\
name: adt
source:
  mllp:
    port: 0
transform: ward:normalise
destinations:
  archive:
    file:
      directory: {folder}
    hold:
      approvals: 1
"""
ADMISSION = (
    "MSH|^~\\&|PAS|R0A|TIE|R0A|20261201031500||ADT^A01^ADT_A01|{control_id}|P|2.5.1\r"
    "PID|1||633^^^R0A^MR~9449305552^^^NHS^NH||O'BRIEN & SONS^Zoë^<Jr>\r"
    "PV1|1|I|{ward}\r"
)


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Iterator[Site]:
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "ward.py").write_text(WARD_MAPPING)
    channels = {"adt": ADT_YAML.format(folder=tmp_path / "archive")}
    with running_site(tmp_path, store_url, USERS, channels=channels) as running:
        yield running


def _admit(
    site: Site, control_id: str, ward: str, status: str = "error", raw: bytes | None = None
) -> int:
    """Send an admission (or ``raw``) to the adt channel; the message's id once ``status``."""
    raw = raw or ADMISSION.format(control_id=control_id, ward=ward).encode()
    with MLLPClient("127.0.0.1", site.running.port("adt")) as client:
        client.send_message(raw)

    def settled() -> int | None:
        with site.running.store.read() as conn:
            query = select(messages.c.id).where(
                messages.c.control_id == control_id, messages.c.status == status
            )
            return conn.scalar(query)

    return wait_until(settled)


def test_a_mapping_failure_is_named_by_its_cause_not_its_traceback_first_line(site):
    message_id = _admit(site, "ADT-BAD-1", "W9")
    sam = sign_in(site.url, "sam")

    listing = sam.get("/messages", params={"channel": "adt"}).text
    row = re.search(r"<tr class=\"attention\">.*?</tr>", listing, re.S).group(0)
    assert "KeyError: &#39;W9&#39;" in row
    assert "Traceback" not in row

    dashboard = sam.get("/").text
    assert "KeyError: &#39;W9&#39;" in dashboard
    assert "Traceback (most recent call last)" not in dashboard

    detail = sam.get(f"/messages/{message_id}").text
    error = re.search(r"<dt>Error</dt><dd class=\"error-text\">(.*?)</dd>", detail, re.S)
    cause, _, rest = error.group(1).partition("<details>")
    assert cause.strip() == "KeyError: &#39;W9&#39;"
    traceback = re.search(r'<pre class="traceback">(.*?)</pre>', rest, re.S).group(1)
    lines = html.unescape(traceback).splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "KeyError: 'W9'"


def test_times_typed_and_shown_name_their_zone(site):
    message_id = _admit(site, "ADT-BAD-2", "W9")
    sam = sign_in(site.url, "sam")

    detail = sam.get(f"/messages/{message_id}").text
    for label in ("Received", "Processed"):
        shown = re.search(rf"<dt>{label}</dt><dd>(.*?)</dd>", detail).group(1)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown), (label, shown)
    for page in (sam.get("/messages").text, sam.get("/audit").text):
        assert re.search(
            r"<label>Since \(UTC\) <small class=\"hint\">[^<]*</small><input name=\"since\"", page
        )
        assert re.search(
            r"<label>Until \(UTC\) <small class=\"hint\">[^<]*</small><input name=\"until\"", page
        )
    wrong = sam.get("/messages", params={"since": "yesterday"}).text
    assert "since: give an ISO time (2026-05-01T09:00 is UTC) or an age (2h)" in wrong


def test_a_message_of_a_paused_channel_says_why_it_waits(site):
    sam = sign_in(site.url, "sam")
    token = csrf_of(sam.get("/").text)
    paused = sam.post("/channels/adt/pause", data={"csrf_token": token, "reason": "PAS upgrade"})
    assert paused.status_code == 303
    message_id = _admit(site, "ADT-WAIT-1", "W1", status="received")

    waiting = sam.get(f"/messages/{message_id}").text
    assert "Channel adt is paused (by sam)" in waiting
    assert "so this one waits until it is resumed" in waiting

    sam.post("/channels/adt/resume", data={"csrf_token": token, "reason": "PAS back"})
    assert "is paused" not in sam.get(f"/messages/{message_id}").text


def test_an_empty_search_says_what_to_try_next(site):
    sam = sign_in(site.url, "sam")

    def empty(**search: str) -> str:
        page = sam.get("/messages", params=search).text
        return " ".join(
            re.search(r'<td colspan="9" class="muted">(.*?)</td>', page, re.S)[1].split()
        )

    assert empty() == "No messages have been received yet."
    assert empty(text="CHISLETT") == (
        "No messages match. Text in content is searched in the last 24 hours only: "
        "give Since (7d, or a UTC time) to look further back."
    )
    assert empty(text="CHISLETT", since="7d") == (
        "No messages match: clear a filter or widen Since and Until."
    )
    assert empty(since="yesterday") == "Correct the search above to see messages."


def test_a_link_to_an_older_page_says_so_and_leads_back_to_the_newest(site):
    for n in range(3):
        _admit(site, f"ADT-PAGE-{n}", "W9")
    sam = sign_in(site.url, "sam")
    newest = sam.get("/messages", params={"channel": "adt"}).text
    ids = re.findall(r'<td class="num"><a href="/messages/(\d+)">', newest)
    assert "Newest first, matching the search" in newest

    older = sam.get("/messages", params={"channel": "adt", "before": ids[0]}).text
    caption = re.search(r"<caption[^>]*>(.*?)</caption>", older, re.S).group(1)
    assert caption.startswith(f"Messages before #{ids[0]}, matching the search")
    assert '<a href="/messages?channel=adt">back to the newest</a>' in caption
    assert re.findall(r'<td class="num"><a href="/messages/(\d+)">', older) == ids[1:]


def test_a_held_batch_links_to_the_messages_it_holds(site):
    _admit(site, "ADT-HELD-1", "W1", status="processed")
    sam = sign_in(site.url, "sam")

    inbox = sam.get("/approvals").text
    card = re.search(r'<section class="card batch">(.*?)</section>', inbox, re.S).group(1)
    link = re.search(r'<a href="(/messages\?[^"]+)">', card)
    assert link, card
    held = sam.get(html.unescape(link.group(1))).text
    assert "ADT-HELD-1" in held
    assert re.search(r"<option selected>held</option>", held)


def test_an_audit_time_that_cannot_be_read_is_named_with_what_to_give(site):
    sam = sign_in(site.url, "sam")

    page = sam.get("/audit", params={"actor": "sam", "since": "yesterday", "until": "now"})
    alerts = re.findall(r'<p class="notice bad" role="alert">(.*?)</p>', page.text)
    hint = "give an ISO time (2026-05-01T09:00 is UTC) or an age (2h)"
    assert [html.unescape(alert) for alert in alerts] == [
        f"since: 'yesterday' is neither an ISO time nor an age: {hint}",
        f"until: 'now' is neither an ISO time nor an age: {hint}",
    ]
    assert '<input name="actor" value="sam">' in page.text


def test_hl7_content_shows_one_segment_a_line_and_each_repetition_on_its_own(site):
    message_id = _admit(site, "ADT-SHOW-1", "W9")
    sam = sign_in(site.url, "sam")
    detail = sam.get(f"/messages/{message_id}").text

    raw = html.unescape(re.search(r'<pre id="raw">(.*?)</pre>', detail, re.S).group(1))
    assert [line[:4] for line in raw.replace("\r", "\n").splitlines()] == ["MSH|", "PID|", "PV1|"]
    assert "O'BRIEN & SONS^Zoë^<Jr>" in raw
    pid3 = re.search(r'<td class="field">PID-3</td>\s*<td>(.*?)</td>', detail, re.S).group(1)
    first, second = (html.unescape(re.sub(r"<[^>]+>", "", line)) for line in pid3.split("<br>"))
    assert " ".join(first.split()) == "633 ^ ^ ^ R0A ^ MR"
    assert " ".join(second.split()) == "~ 9449305552 ^ ^ ^ NHS ^ NH"


def test_the_pause_and_resume_dialogs_say_what_the_switch_will_do(site):
    sam = sign_in(site.url, "sam")

    def dialog() -> str:
        page = sam.get("/").text
        found = re.search(r'<dialog id="switch-adt".*?</dialog>', page, re.S).group(0)
        return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found)).split())

    assert "adt keeps receiving and storing messages (senders get their ACKs)" in dialog()
    sam.post("/channels/adt/pause", data={"csrf_token": csrf_of(sam.get("/").text)})
    _admit(site, "ADT-WAIT-2", "W1", status="received")
    assert "Its 1 waiting message(s) are processed first, in the order they came" in dialog()


def test_an_error_page_says_what_to_do_next(site):
    sam = sign_in(site.url, "sam")

    missing = sam.get("/messages/99999")
    assert missing.status_code == 404
    assert "Check the link. A message can be found from Messages by its control id" in (
        missing.text
    )
    token = csrf_of(sam.get("/").text)
    wrong = sam.post("/messages/bulk/preview", data={"csrf_token": token, "action": "delete"})
    assert wrong.status_code == 400
    assert "Go back, correct what the form says and send it again." in wrong.text


def test_a_bulk_confirmation_without_a_reason_shows_the_same_dry_run_again(site):
    for n in range(2):
        _admit(site, f"ADT-BULK-{n}", "W9")
    sam = sign_in(site.url, "sam")
    token = csrf_of(sam.get("/").text)
    search = {"csrf_token": token, "channel": "adt", "status": "error", "action": "reprocess"}
    preview = sam.post("/messages/bulk/preview", data=search).text
    ids = re.search(r'name="ids" value="([\d,]+)"', preview).group(1)

    refused = sam.post("/messages/bulk", data={**search, "ids": ids, "reason": "  "})
    assert refused.status_code == 422
    assert "Give a reason: it is kept in the audit log with each item." in refused.text
    assert re.search(r'name="ids" value="([\d,]+)"', refused.text).group(1) == ids
    assert refused.text.count("would reprocess #") == 2
    assert '<textarea name="reason" required maxlength="1000">  </textarea>' in refused.text
    assert '<input type="hidden" name="status" value="error">' in refused.text


def test_an_attempt_that_got_no_response_says_none(tmp_path, store_url):
    (port,) = free_ports(1)  # nobody listens: the attempt is refused
    channels = {"feed": FEED_YAML.format(port=port)}
    with running_site(tmp_path, store_url, USERS, channels=channels) as site:
        raw = ADMISSION.format(control_id="FEED-1", ward="W1").encode()
        with MLLPClient("127.0.0.1", site.running.port("feed")) as client:
            client.send_message(raw)
        wait_until(lambda: site.delivery_status("FEED-1") == ["retrying"])
        sam = sign_in(site.url, "sam")
        listing = sam.get("/messages", params={"control_id": "FEED-1"}).text
        message_id = re.search(r'href="/messages/(\d+)"', listing).group(1)
        page = sam.get(f"/messages/{message_id}").text

    attempts = page.partition('<th class="num">Attempt</th>')[2]
    attempt = re.search(r'<td class="num">1</td>.*?</tr>', attempts, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", attempt, re.S)
    assert cells[4] == '<span class="muted">none</span>'
    assert f"127.0.0.1:{port}" in cells[5]


def test_hl7_in_iso_8859_1_is_shown_in_its_own_characters(site):
    raw = ADMISSION.format(control_id="ADT-LATIN-1", ward="W9").replace(
        "|P|2.5.1\r", "|P|2.5.1|||||GBR|8859/1\r"
    )
    message_id = _admit(site, "ADT-LATIN-1", "W9", raw=raw.encode("latin-1"))
    detail = sign_in(site.url, "sam").get(f"/messages/{message_id}").text

    shown = html.unescape(re.search(r'<pre id="raw">(.*?)</pre>', detail, re.S).group(1))
    assert "O'BRIEN & SONS^Zoë^<Jr>" in shown
    pid5 = re.search(r'<td class="field">PID-5</td>\s*<td>(.*?)</td>', detail, re.S).group(1)
    assert "Zoë" in html.unescape(pid5)
    assert "\ufffd" not in detail


class Latin1Lab:
    """An MLLP peer that answers every message with an AE in ISO 8859-1 (MSH-18)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self.server.accept()
                with connection:
                    received = b""
                    while not received.endswith(b"\x1c\r"):
                        received += connection.recv(65536)
                    ack = (
                        "MSH|^~\\&|LAB|R0A|PAS|R0A|20261201031500||ACK|A1|P|2.5.1|||||GBR|8859/1\r"
                        "MSA|AE|FEED-2|Zoë: ward unknown\r"
                    )
                    connection.sendall(b"\x0b" + ack.encode("latin-1") + b"\x1c\r")

    def stop(self) -> None:
        self.server.close()


def test_a_remote_ack_in_iso_8859_1_is_shown_in_its_own_characters(tmp_path, store_url):
    lab = Latin1Lab()
    channels = {"feed": FEED_YAML.format(port=lab.port)}
    try:
        with running_site(tmp_path, store_url, USERS, channels=channels) as site:
            raw = ADMISSION.format(control_id="FEED-2", ward="W1").encode()
            with MLLPClient("127.0.0.1", site.running.port("feed")) as client:
                client.send_message(raw)
            wait_until(lambda: site.delivery_status("FEED-2") == ["retrying"])
            sam = sign_in(site.url, "sam")
            listing = sam.get("/messages", params={"control_id": "FEED-2"}).text
            message_id = re.search(r'href="/messages/(\d+)"', listing).group(1)
            page = sam.get(f"/messages/{message_id}").text
    finally:
        lab.stop()

    attempts = page.partition('<th class="num">Attempt</th>')[2]
    response = re.search(r"<pre>(.*?)</pre>", attempts, re.S).group(1)
    assert "MSA|AE|FEED-2|Zoë: ward unknown" in html.unescape(response)
