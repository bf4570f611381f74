"""A detail view shows a large inline payload by its head, as it shows a blob's."""

from __future__ import annotations

from router.api.messages import jsonable
from router.config import ChannelConfig
from router.pipeline import compile_channel
from router.processing import Processor
from router.store.queries import PREVIEW, message_detail

CHANNEL = ChannelConfig.model_validate(
    {
        "name": "results",
        "source": {"mllp": {"port": 0}},
        "destinations": {"epr": {"mllp": {"host": "127.0.0.1", "port": 2578}}},
    }
)


def test_a_large_inline_message_and_its_payload_are_shown_by_their_first_bytes(store, receive, er7):
    big = er7("BIG1") + b"NTE|1||" + b"x" * (3 * PREVIEW) + b"END-OF-MESSAGE"
    (big_id,) = receive("results", big)
    (small_id,) = receive("results", er7("SMALL1"))
    Processor(store, {"results": compile_channel(CHANNEL)}).run_once()

    with store.read() as conn:
        detail = message_detail(conn, big_id)
        small = message_detail(conn, small_id)

    assert detail["raw"] == big[:PREVIEW] and detail["raw_truncated"] is True
    assert detail["size"] == len(big)
    (delivery,) = detail["deliveries"]
    assert delivery["payload"] == big[:PREVIEW] and delivery["payload_truncated"] is True
    assert delivery["payload_size"] == len(big)
    assert small["raw"] == er7("SMALL1") and small["raw_truncated"] is False
    (whole,) = small["deliveries"]
    assert whole["payload"] == er7("SMALL1") and whole["payload_truncated"] is False
    assert whole["payload_size"] == len(er7("SMALL1"))


def test_a_utf8_character_the_cut_would_split_is_left_out_so_the_head_stays_text(
    store, receive, er7
):
    head = er7("UTF8") + b"NTE|1||"
    big = head + b"x" * (PREVIEW - len(head) - 1) + "é".encode() * PREVIEW
    assert big[PREVIEW - 1 : PREVIEW + 1] == "é".encode()  # the cut falls inside it
    (message_id,) = receive("results", big)

    with store.read() as conn:
        detail = message_detail(conn, message_id)

    assert detail["raw"] == big[: PREVIEW - 1] and detail["raw_truncated"] is True
    assert jsonable(detail)["raw"] == big[: PREVIEW - 1].decode()
