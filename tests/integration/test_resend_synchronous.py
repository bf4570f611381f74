"""A synchronous exchange's delivery (BaRS ``forward``, the proxy's ``provider``) is not
resent: no dispatcher worker sends those, so its copy would stay queued for ever."""

from __future__ import annotations

import html

import pytest
from console_testing import csrf_of, running_site, sign_in
from sqlalchemy import func, select

from router import replay
from router.cli import main
from router.store.database import Store
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.migrate import upgrade
from router.store.schema import deliveries, messages


def _failed(store: Store, channel: str, destination: str, source: dict) -> int:
    """A message of ``channel`` from ``source`` whose delivery to ``destination`` failed."""
    item = Inbound(channel, b"{}", content_type="fhir+json", status="processed", source=source)
    now = utcnow()
    with store.begin() as conn:
        write_inbound(conn, [item])
        message_id = conn.scalar(select(messages.c.id).where(messages.c.uuid == item.uuid))
        row = deliveries.insert().values(
            message_id=message_id,
            channel=channel,
            destination=destination,
            status="failed",
            content_type="fhir+json",
            payload=b"{}",
            attempts=1,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            last_error="could not be reached",
        )
        return conn.execute(row).inserted_primary_key[0]


def test_a_synchronous_exchange_is_refused_and_left_out_of_a_bulk_resend(store_url):
    store = Store(store_url)
    upgrade(store)
    try:
        bars = _failed(store, "bars-referrals", "forward", {"protocol": "http", "bars": {}})
        proxied = _failed(
            store, "booking-proxy", "provider", {"protocol": "http", "method": "POST"}
        )
        # A queued channel may name its own destination "forward": that one is resent.
        mllp = _failed(store, "lab-orders", "forward", {"protocol": "mllp"})
        with store.read() as conn:
            before = conn.scalar(select(func.count()).select_from(deliveries))
            message_ids = list(conn.scalars(select(messages.c.id)))
            assert replay.deliveries_of(conn, message_ids) == replay.Chosen([mllp], 2)

        for delivery in (bars, proxied):
            with pytest.raises(replay.NotFinished, match="synchronous exchange") as refused:
                replay.resend(store, delivery, reason="receiver back", actor="sam")
            assert "the sender repeats the request" in str(refused.value)
            (plan,) = replay.plan_resend(store, [delivery])
            assert plan.description.startswith(f"not resend delivery {delivery} (failed)")
        with store.read() as conn:
            assert conn.scalar(select(func.count()).select_from(deliveries)) == before
            assert [str(x) for x in replay.unfinished(conn, [bars, mllp])] == [
                str(replay.SynchronousExchange(bars, "bars-referrals"))
            ]

        (result,) = replay.resend_many(store, [mllp], reason="lab back", actor="sam")
        assert result.copy is not None
    finally:
        store.dispose()


def test_the_console_api_and_cli_say_a_synchronous_exchange_is_left_out(
    tmp_path, store_url, capsys
):
    """No Resend button for one (the engine refuses it, 409) but why in its place, and a
    resend by search counts those it leaves out, with why, wherever it is asked for."""
    left_out = f"1 {replay.SYNCHRONOUS_LEFT_OUT}"
    with running_site(tmp_path, store_url, {"sam": ["support"]}) as site:
        store = site.running.store
        bars = _failed(store, "bars-referrals", "forward", {"protocol": "http", "bars": {}})
        with store.read() as conn:
            message = conn.scalar(select(deliveries.c.message_id).where(deliveries.c.id == bars))
        support = sign_in(site.url, "sam")
        for page in (f"/messages/{message}", f"/messages/{message}/deliveries"):
            shown = support.get(page).text
            assert (
                f'id="resend-{bars}-opener"' not in shown
                and f"/deliveries/{bars}/resend" not in shown
            )
            assert f'id="no-resend-{bars}"' in shown
            assert "No resend: a synchronous exchange; its sender repeats the request" in shown

        token = csrf_of(support.get("/").text)
        search = {"channel": "bars-referrals", "delivery": "failed", "csrf_token": token}
        preview = support.post("/messages/bulk/preview", data={**search, "action": "resend"})
        assert "nothing matches" in preview.text and left_out in html.unescape(preview.text)

        answer = support.post(
            "/api/deliveries/resend",
            json={"search": {"channel": "bars-referrals"}, "reason": "receiver back"},
            headers={"X-CSRF-Token": token},
        )
        assert answer.status_code == 200, answer.text
        assert (answer.json()["count"], answer.json()["left_out"]) == (
            0,
            [{"count": 1, "reason": replay.SYNCHRONOUS_LEFT_OUT}],
        )

        config = tmp_path / "cli.yaml"
        config.write_text(f"store: {store_url}\nchannels: {tmp_path / 'channels'}\n")
        capsys.readouterr()
        command = ["resend", "--channel", "bars-referrals", "--reason", "x", "--actor", "sam"]
        assert main(["--config", str(config), *command]) == 0
        printed = capsys.readouterr()
        assert printed.out == "nothing matches\n" and printed.err == f"{left_out}\n"
