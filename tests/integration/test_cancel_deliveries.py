"""Cancelling deliveries that should not go out, through the running engine: a feed whose
receiver is down, its deliveries cancelled over the API, the CLI and the console, and the
receiver, back, gets only what was not cancelled (and a resend of a cancelled one)."""

from __future__ import annotations

import contextlib
import html
import re

import httpx
from console_testing import FEED_YAML, Site, csrf_of, order, running_site, sign_in
from hl7.client import MLLPClient
from tie_testing import Hl7Receiver, api_token, free_ports, wait_until

from router.cli import main

OML = "OML_O21_nhs_nwgmsa_v251"


def _send(site: Site, raw: bytes) -> None:
    with MLLPClient("127.0.0.1", site.running.port("feed")) as client:
        client.send_message(raw)


def _delivery_of(support: httpx.Client, control_id: str) -> int:
    [found] = support.get("/api/messages", params={"control_id": control_id}).json()["messages"]
    [delivery] = support.get(f"/api/messages/{found['id']}").json()["deliveries"]
    return delivery["id"]


def test_cancelled_deliveries_never_go_out_when_the_receiver_returns(
    tmp_path, store_url, hl7_samples, capsys, monkeypatch
):
    (port,) = free_ports(1)  # the receiver is down: nobody listens
    channels = {"feed": FEED_YAML.format(port=port)}
    with (
        contextlib.ExitStack() as afterwards,
        running_site(tmp_path, store_url, {}, channels=channels) as site,
    ):
        sample = hl7_samples[OML]
        _send(site, order(sample, "WRONG-1"))
        wait_until(lambda: site.delivery_status("WRONG-1") == ["retrying"])  # for a minute
        for n in (2, 3):  # behind WRONG-1 in the ordered lane
            _send(site, order(sample, f"WRONG-{n}"))
            wait_until(lambda n=n: site.delivery_status(f"WRONG-{n}") == ["queued"])
        token = api_token(site.running.store, "support", name="sam")
        support = httpx.Client(
            base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"}
        )
        first = _delivery_of(support, "WRONG-1")

        # Behind the retrying head first (with the head gone they would be tried at once):
        # by the CLI, then by an API search.
        monkeypatch.setenv("TIE_STORE", store_url)
        monkeypatch.delenv("TIE_TOKEN", raising=False)
        capsys.readouterr()
        command = ["cancel", "--channel", "feed", "--control-id", "WRONG-3", "--reason", "old"]
        assert main([*command, "--actor", "sam"]) == 0
        assert capsys.readouterr().out.startswith("cancelled delivery")
        search = {"search": {"channel": "feed", "control_id": "WRONG-2"}, "reason": "mistake"}
        assert support.post("/api/deliveries/cancel", json=search).json()["count"] == 1

        blank = support.post(f"/api/deliveries/{first}/cancel", json={"reason": " "})
        assert blank.status_code == 422
        dry = support.post(
            f"/api/deliveries/{first}/cancel", json={"reason": "wrong patient", "dry_run": True}
        ).json()
        assert dry["results"][0]["description"] == f"cancel delivery {first} (retrying) to feed/pas"
        assert site.delivery_status("WRONG-1") == ["retrying"]
        body, key = {"reason": "wrong patient"}, {"Idempotency-Key": "cancel-wrong-1"}
        one = support.post(f"/api/deliveries/{first}/cancel", json=body, headers=key)
        assert one.status_code == 200, one.text
        # Sent again (the answer was lost): the kept answer, not a refusal or a second cancel.
        retry = support.post(f"/api/deliveries/{first}/cancel", json=body, headers=key)
        assert (retry.json(), retry.headers["Idempotent-Replayed"]) == (one.json(), "true")
        assert one.json()["results"][0]["description"].startswith(f"cancelled delivery {first}")
        again = support.post(f"/api/deliveries/{first}/cancel", json={"reason": "twice"})
        assert again.status_code == 409
        assert again.json()["detail"].startswith(f"delivery {first} is not cancelled (cancelled)")
        assert [site.delivery_status(f"WRONG-{n}") for n in (1, 2, 3)] == [["cancelled"]] * 3

        receiver = Hl7Receiver(port=port)  # back
        afterwards.callback(receiver.stop)  # once the engine has stopped
        # The lane is ordered: RIGHT-1 goes out only once nothing before it is still to go.
        _send(site, order(sample, "RIGHT-1"))
        wait_until(lambda: site.delivery_status("RIGHT-1") == ["sent"])
        assert receiver.control_ids() == ["RIGHT-1"]

        # A cancelled delivery can still be resent, on purpose.
        resent = support.post(f"/api/deliveries/{first}/resend", json={"reason": "after all"})
        assert resent.status_code == 200, resent.text
        wait_until(lambda: site.delivery_status("WRONG-1") == ["cancelled", "sent"])
        assert receiver.control_ids() == ["RIGHT-1", "WRONG-1"]

        events = support.get("/api/audit", params={"actor": "sam"}).json()["events"]
        reasons = sorted(e["details"]["reason"] for e in events if e["action"] == "cancel")
        assert reasons == ["mistake", "old", "wrong patient"]
        keys = {e["details"].get("idempotency_key") for e in events if e["action"] == "cancel"}
        assert keys == {None, "cancel-wrong-1"}, "the keyed request's event names its key"
        (row,) = [c for c in support.get("/api/channels").json() if c["channel"] == "feed"]
        assert (row["cancelled"], row["queued"]) == (3, 0)
        config = tmp_path / "engine.yaml"
        config.write_text(f"store: {store_url}\nchannels: {tmp_path / 'channels'}\n")
        capsys.readouterr()
        assert main(["--config", str(config), "channel", "list"]) == 0
        header, *rows = capsys.readouterr().out.splitlines()
        (feed,) = [r.split() for r in rows if r.startswith("feed")]
        assert dict(zip(header.split(), feed, strict=True))["CANCELLED"] == "3"


def test_a_waiting_delivery_is_cancelled_from_the_message_page(tmp_path, store_url, hl7_samples):
    (port,) = free_ports(1)  # the receiver is down
    channels = {"feed": FEED_YAML.format(port=port)}
    users = {"sam": ["support"], "vic": ["viewer"]}
    with running_site(tmp_path, store_url, users, channels=channels) as site:
        _send(site, order(hl7_samples[OML], "WRONG-1"))
        wait_until(lambda: site.delivery_status("WRONG-1") == ["retrying"])
        sam = sign_in(site.url, "sam")
        listing = sam.get("/messages", params={"control_id": "WRONG-1"}).text
        message_id = re.search(r'href="/messages/(\d+)"', listing).group(1)
        page = sam.get(f"/messages/{message_id}").text
        delivery = re.search(r'data-delivery="(\d+)"', page).group(1)
        token = {"csrf_token": csrf_of(page)}
        assert f'data-dialog="cancel-{delivery}"' in page
        assert f'action="/deliveries/{delivery}/cancel"' in page
        assert f'data-dialog="resend-{delivery}"' not in page  # still to be sent

        preview = sam.post(f"/deliveries/{delivery}/cancel/preview", data=token)
        assert f"would cancel delivery {delivery} (retrying) to feed/pas" in preview.text
        assert sam.post(f"/deliveries/{delivery}/cancel", data=token).status_code == 400
        viewer = sign_in(site.url, "vic")
        vic_token = {"csrf_token": csrf_of(viewer.get("/").text), "reason": "x"}
        assert viewer.post(f"/deliveries/{delivery}/cancel", data=vic_token).status_code == 403
        done = sam.post(f"/deliveries/{delivery}/cancel", data={**token, "reason": "wrong ward"})
        assert (done.status_code, done.headers.get("location")) == (
            303,
            f"/messages/{message_id}?done=cancelled",
        )
        after = sam.get(done.headers["location"]).text
        assert "Cancelled: the delivery will not be sent." in after
        assert f'data-dialog="cancel-{delivery}"' not in after
        assert f'data-dialog="resend-{delivery}"' in after  # finished: it may be resent
        assert "cancelled by sam: wrong ward" in after
        again = sam.post(f"/deliveries/{delivery}/cancel", data={**token, "reason": "twice"})
        assert again.status_code == 409
        assert "it is finished: nothing is left to stop" in html.unescape(again.text)
        assert site.delivery_status("WRONG-1") == ["cancelled"]


def test_bulk_cancel_from_a_search_lists_first_then_cancels_what_was_listed(
    tmp_path, store_url, hl7_samples
):
    (port,) = free_ports(1)  # the receiver is down
    channels = {"feed": FEED_YAML.format(port=port)}
    with running_site(tmp_path, store_url, {"sam": ["support"]}, channels=channels) as site:
        _send(site, order(hl7_samples[OML], "WRONG-1"))
        wait_until(lambda: site.delivery_status("WRONG-1") == ["retrying"])  # for a minute
        _send(site, order(hl7_samples[OML], "WRONG-2"))
        wait_until(lambda: site.delivery_status("WRONG-2") == ["queued"])
        sam = sign_in(site.url, "sam")
        listing = sam.get("/messages", params={"channel": "feed"}).text
        assert '<option value="cancel">' in listing
        search = {"channel": "feed", "csrf_token": csrf_of(listing)}

        preview = sam.post("/messages/bulk/preview", data={**search, "action": "cancel"}).text
        assert preview.count("would cancel delivery") == 2
        assert site.delivery_status("WRONG-1") == ["retrying"]
        ids = re.search(r'name="ids" value="([\d,]+)"', preview).group(1)
        form = {**search, "action": "cancel", "ids": ids, "reason": "sent to the wrong PAS"}
        done = sam.post("/messages/bulk", data=form)
        assert done.status_code == 303
        for _ in range(2):  # a reload shows the result, never cancels again
            result = sam.get(done.headers["location"]).text
            assert "2 item(s) cancelled." in result
            assert "Reason: “sent to the wrong PAS”" in result
            assert result.count("cancelled delivery ") == 2
        assert [site.delivery_status(f"WRONG-{n}") for n in (1, 2)] == [["cancelled"]] * 2
        repeat = sam.post("/messages/bulk/preview", data={**search, "action": "cancel"}).text
        assert "would cancel delivery" not in repeat
