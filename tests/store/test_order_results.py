"""Orders tied to results: the unmatched-order flag, failed unresolved deliveries, the timeline."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from router.config import ChannelConfig
from router.directory import Directory, make_endpoint, make_key
from router.pipeline import CompiledChannel, compile_channel
from router.processing import Processor
from router.store.inbound import utcnow
from router.store.queries import MessageFilter, message_detail, search, search_query
from router.store.schema import attempts, deliveries, message_flags

d = deliveries.c
GP = make_endpoint(make_key("ods", "Y01234"), "pathology-result", "mesh", "X26GP001")


def _orders() -> CompiledChannel:
    return compile_channel(
        ChannelConfig.model_validate(
            {
                "name": "orders",
                "source": {"mllp": {"port": 0}},
                "correlate": {"placer_order": ["ORC-2.1", "OBR-2.1"]},
                "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": 2576}}},
            }
        )
    )


def _results(**gp: Any) -> CompiledChannel:
    config = ChannelConfig.model_validate(
        {
            "name": "results",
            "source": {"mllp": {"port": 0}},
            "correlate": {"placer_order": ["ORC-2.1", "OBR-2.1"]},
            "unmatched": {"key": "placer_order", "channels": ["orders"]},
            "destinations": {
                "gp": {
                    "directory": {
                        "interaction": "pathology-result",
                        "target": ["ORC-21.10", "ORC-21.3"],
                        "kind": "ods",
                        "unresolved": "fail",
                    },
                    "mesh": {"mailbox": "trust", "workflow_id": "PATHOLOGY_FHIR_R4"},
                    **gp,
                }
            },
        }
    )
    return compile_channel(config, Directory(None, [GP]).addresses)


def _result(control_id: str, placer: str, practice: str = "Y01234") -> bytes:
    return (
        f"MSH|^~\\&|LAB|RBA11|TIE|{practice}|20240101120000||ORU^R01|{control_id}|P|2.5.1\r"
        f"PID|1||P1^^^HOSP^MR\r"
        f"ORC|RE|{placer}^{practice}|||||||||||||||||||PRACTICE^^{practice}^^^ODS\r"
        f"OBR|1|{placer}^{practice}\r"
    ).encode()


def _processor(store) -> Processor:
    return Processor(store, {"orders": _orders(), "results": _results()})


def test_a_result_without_a_known_order_is_flagged_and_found_by_flag(store, receive, er7):
    order = er7("ORD1")  # ORC-2 ORD1-PLACER
    receive("orders", order)
    matched, unmatched = receive(
        "results", _result("RES1", "ORD1-PLACER"), _result("RES2", "NO-SUCH-ORDER")
    )
    _processor(store).run_once()

    with store.read() as conn:
        flagged = search(conn, MessageFilter(flag="unmatched-order"))
        assert [r["id"] for r in flagged] == [unmatched]
        assert message_detail(conn, unmatched)["flags"] == ["unmatched-order"]
        assert message_detail(conn, matched)["flags"] == []
        assert search(conn, MessageFilter(flag="unmatched-order", channel="orders")) == []


def test_the_flag_search_uses_the_flag_index(store):
    """Searching by flag probes message_flags by its key, never a scan of messages."""
    query = search_query(MessageFilter(flag="unmatched-order"), store.dialect)
    with store.read() as conn:
        sql = query.compile(conn, compile_kwargs={"literal_binds": True})
        explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
        plan = " ".join(str(r) for r in conn.exec_driver_sql(explain + str(sql)))
    assert "message_flags" in plan
    if store.dialect == "sqlite":
        assert "SCAN message_flags" not in plan


def test_an_unknown_practice_fails_its_delivery_with_the_reason(store, receive):
    (message_id,) = receive("results", _result("RES3", "ORD9", practice="Y99999"))
    _processor(store).run_once()

    with store.read() as conn:
        detail = message_detail(conn, message_id)
    assert detail["status"] == "processed"
    (delivery,) = detail["deliveries"]
    assert delivery["status"] == "failed"
    assert delivery["address"] is None
    assert "no mesh endpoint for ods:Y99999" in delivery["last_error"]
    assert "'pathology-result'" in delivery["last_error"]


def test_the_timeline_joins_order_ack_result_and_delivery(store, receive, er7):
    (order_id,) = receive("orders", er7("ORD1"))
    (result_id,) = receive("results", _result("RES1", "ORD1-PLACER"))
    _processor(store).run_once()
    with store.begin() as conn:
        lab = conn.scalar(select(d.id).where(d.message_id == order_id))
        conn.execute(
            attempts.insert().values(
                delivery_id=lab,
                number=1,
                started_at=utcnow(),
                duration_ms=1.0,
                outcome="sent",
                response=b"MSH|^~\\&|LAB|HOSP|EPR|HOSP|20240101||ACK^O21^ACK|A1|P|2.5.1\rMSA|AA|ORD1\r",
            )
        )
        conn.execute(deliveries.update().where(d.id == lab).values(status="sent", attempts=1))

    with store.read() as conn:
        timeline = message_detail(conn, result_id)["timeline"]
        assert conn.scalar(select(func.count()).select_from(message_flags)) == 0
    assert [(t["id"], t["channel"]) for t in timeline] == [
        (order_id, "orders"),
        (result_id, "results"),
    ]
    (ack,) = timeline[0]["deliveries"]
    assert (ack["destination"], ack["status"], ack["answer"]) == ("lab", "sent", "AA")
    (gp,) = timeline[1]["deliveries"]
    assert (gp["destination"], gp["status"], gp["address"]) == ("gp", "queued", "X26GP001")
