"""The shortest whole path: a python-hl7 client, the engine, a python-hl7 receiver."""

from __future__ import annotations

from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import Hl7Receiver, RunningEngine, channel, engine_config, wait_until

from router.connectors.channel import MAX_HOPS
from router.store.schema import deliveries, messages


def test_order_reaches_the_lab_and_is_acknowledged(tmp_path, store_url, hl7_samples):
    lab = Hl7Receiver()
    orders = channel(
        {
            "name": "lab-orders",
            "source": {"mllp": {"port": 0}},
            "filter": [{"field": "MSH-9.1", "in": ["OML", "ORM"]}],
            "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": lab.port}}},
        }
    )
    running = RunningEngine(engine_config(tmp_path, store_url), {"lab-orders": orders})
    try:
        message = hl7_samples["OML_O21_nhs_nwgmsa_v251"]
        with MLLPClient("127.0.0.1", running.port("lab-orders")) as client:
            ack = client.send_message(message)
        assert b"MSA|CA|9612365d-52a4-4fab-87e7-8a09d753f095" in ack
        wait_until(lambda: lab.received)
        assert lab.control_ids() == ["9612365d-52a4-4fab-87e7-8a09d753f095"]

        def sent():
            with running.store.read() as conn:
                return conn.scalar(select(deliveries.c.status)) == "sent"

        wait_until(sent)
    finally:
        running.stop()
        lab.stop()


def test_a_channel_feeds_another_through_the_running_engine(tmp_path, store_url, hl7_samples):
    lab = Hl7Receiver()
    intake = channel(
        {
            "name": "intake",
            "source": {"mllp": {"port": 0}},
            "destinations": {"onward": {"channel": {"channel": "lab-feed"}}},
        }
    )
    lab_feed = channel(
        {
            "name": "lab-feed",
            "source": {"channel": {}},
            "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": lab.port}}},
        }
    )
    running = RunningEngine(
        engine_config(tmp_path, store_url), {"intake": intake, "lab-feed": lab_feed}
    )
    try:
        with MLLPClient("127.0.0.1", running.port("intake")) as client:
            client.send_message(hl7_samples["OML_O21_nhs_nwgmsa_v251"])
        wait_until(lambda: lab.received)
        assert lab.control_ids() == ["9612365d-52a4-4fab-87e7-8a09d753f095"]
        with running.store.read() as conn:
            channels = conn.scalars(select(messages.c.channel).order_by(messages.c.id)).all()
        assert channels == ["intake", "lab-feed"]
    finally:
        running.stop()
        lab.stop()


def test_a_channel_that_feeds_itself_stops_at_the_hop_limit(tmp_path, store_url, hl7_samples):
    entry = channel(
        {
            "name": "entry",
            "source": {"mllp": {"port": 0}},
            "destinations": {"onward": {"channel": {"channel": "loop"}}},
        }
    )
    loop = channel(
        {
            "name": "loop",
            "source": {"channel": {}},
            "destinations": {"again": {"channel": {"channel": "loop"}}},
        }
    )
    running = RunningEngine(engine_config(tmp_path, store_url), {"entry": entry, "loop": loop})
    try:
        with MLLPClient("127.0.0.1", running.port("entry")) as client:
            client.send_message(hl7_samples["OML_O21_nhs_nwgmsa_v251"])

        def failed() -> list[str]:
            with running.store.read() as conn:
                return conn.scalars(
                    select(deliveries.c.last_error).where(deliveries.c.status == "failed")
                ).all()

        assert wait_until(failed) == [
            f"channel loop: the message has been fed through {MAX_HOPS} channels in a row"
        ]
        with running.store.read() as conn:
            channels = conn.scalars(select(messages.c.channel)).all()
        assert sorted(channels) == ["entry"] + ["loop"] * MAX_HOPS
    finally:
        running.stop()
