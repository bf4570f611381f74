"""The endpoint directory in the store: idempotent seeding, audited changes, lookups, and
destinations whose recipients the processor resolves through it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from router.config import ChannelConfig
from router.directory import (
    Directory,
    Key,
    list_endpoints,
    make_endpoint,
    put_endpoint,
    remove_endpoints,
    seed,
)
from router.pipeline import compile_channel
from router.processing import Processor
from router.store.database import Store
from router.store.schema import audit_events, deliveries, messages

RYE = Key("ods", "RYE")
DOS = Key("dos", "111111111")


def _config(key: Key, interaction: str, address: str, **kw: Any) -> Any:
    return make_endpoint(key, interaction, "fhir", address, origin="config", **kw)


def _rows(store: Store) -> list[tuple[str, str, str, str, str]]:
    with store.read() as conn:
        return [
            (
                f"{r['kind']}:{r['identifier']}",
                r["interaction"],
                r["address"],
                r["scope"],
                r["origin"],
            )
            for r in list_endpoints(conn)
        ]


def _audit(store: Store) -> list[tuple[str, str]]:
    with store.read() as conn:
        return [
            (r.action, r.target)
            for r in conn.execute(select(audit_events).order_by(audit_events.c.id))
        ]


def test_seeding_is_idempotent_and_leaves_operators_entries(store):
    first = [
        _config(DOS, "servicerequest-request", "http://a.example/fhir"),
        _config(DOS, "booking-request", "http://a.example/fhir"),
        _config(RYE, "immunisation", "http://gp.example/fhir", scope="all"),
    ]
    assert seed(store, first).__dict__ == {"added": 3, "updated": 0, "removed": 0}
    assert seed(store, first).__dict__ == {"added": 0, "updated": 0, "removed": 0}
    with store.begin() as conn:
        put_endpoint(
            conn,
            make_endpoint(Key("asid", "200000000116"), "search", "fhir", "http://c.example"),
            actor="alice",
        )

    # The file moves one endpoint and drops another; the operator's entry stays.
    second = [
        _config(DOS, "servicerequest-request", "http://b.example/fhir"),
        _config(RYE, "immunisation", "http://gp.example/fhir", scope="all"),
    ]
    assert seed(store, second).__dict__ == {"added": 0, "updated": 1, "removed": 1}
    assert _rows(store) == [
        ("asid:200000000116", "search", "http://c.example", "addressed", "operator"),
        ("dos:111111111", "servicerequest-request", "http://b.example/fhir", "addressed", "config"),
        ("ods:RYE", "immunisation", "http://gp.example/fhir", "all", "config"),
    ]
    actions = _audit(store)
    assert ("endpoint.put", "endpoint:asid:200000000116") in actions
    assert actions.count(("endpoint.put", "endpoint:dos:111111111")) == 3
    assert ("endpoint.remove", "endpoint:*") in actions


def test_the_file_takes_over_an_operators_entry_with_the_same_key(store):
    with store.begin() as conn:
        put_endpoint(
            conn, make_endpoint(DOS, "booking-request", "fhir", "http://old.example"), actor="bob"
        )
    assert seed(store, [_config(DOS, "booking-request", "http://new.example")]).updated == 1
    assert _rows(store) == [
        ("dos:111111111", "booking-request", "http://new.example", "addressed", "config")
    ]


def test_remove_by_key_interaction_and_transport(store):
    with store.begin() as conn:
        for interaction in ("a", "b"):
            put_endpoint(conn, make_endpoint(RYE, interaction, "fhir", "http://x"), actor="t")
        put_endpoint(conn, make_endpoint(RYE, "a", "mllp", "lab:2575"), actor="t")
        gone = remove_endpoints(conn, RYE, actor="t", interaction="a", transport="mllp")
        assert [(r["interaction"], r["transport"]) for r in gone] == [("a", "mllp")]
        assert remove_endpoints(conn, Key("ods", "NOPE"), actor="t") == []
        assert len(remove_endpoints(conn, RYE, actor="t")) == 2
        assert list_endpoints(conn) == []


def test_lookups_read_a_snapshot_that_refresh_renews(store):
    seed(
        store,
        [
            _config(DOS, "servicerequest-request", "http://a.example"),
            _config(RYE, "immunisation", "http://gp.example", scope="all"),
        ],
    )
    directory = Directory(store)
    assert directory.lookup(DOS, "servicerequest-request", "fhir").address == "http://a.example"
    assert directory.lookup(DOS, "servicerequest-request", "mllp") is None
    assert directory.lookup(DOS, "booking-request", "fhir") is None
    assert [e.key for e in directory.subscribers("immunisation", "fhir")] == [RYE]
    assert directory.registered(DOS, "servicerequest-request")
    assert not directory.registered(DOS, "booking-request")

    with store.begin() as conn:
        put_endpoint(conn, make_endpoint(DOS, "booking-request", "fhir", "http://b"), actor="t")
    assert directory.lookup(DOS, "booking-request", "fhir") is None  # still the old snapshot
    directory.refresh()
    assert directory.lookup(DOS, "booking-request", "fhir").address == "http://b"


def _oml(control_id: str, facility: str) -> bytes:
    return (
        f"MSH|^~\\&|EPR|R0A|LAB|{facility}|20240101120000||OML^O21|{control_id}|P|2.5.1\r"
        "PID|1||9434765919^^^NHS^NH||DOE^JANE\r"
    ).encode()


def _routed_channel(directory: Directory, lookup: dict[str, Any]) -> Any:
    config = ChannelConfig.model_validate(
        {
            "name": "orders",
            "source": {"mllp": {"port": 0}},
            "destinations": {"lab": {"directory": lookup, "mllp": {}}},
        }
    )
    return compile_channel(config, resolve=directory.addresses)


def _store_messages(store: Store, *raws: bytes) -> None:
    from router.connectors.hl7_inbound import hl7_inbound
    from router.store.inbound import write_inbound

    with store.begin() as conn:
        write_inbound(conn, [hl7_inbound("orders", raw) for raw in raws])


def test_processing_resolves_each_recipient_into_a_delivery_of_its_own(store):
    with store.begin() as conn:
        for key, address, scope in (
            (Key("ods", "699X0"), "lab-a:2575", "addressed"),
            (Key("ods", "RYY"), "lab-b:2575", "addressed"),
            (Key("ods", "X26"), "archive:2575", "all"),
        ):
            put_endpoint(
                conn, make_endpoint(key, "lab-order", "mllp", address, scope=scope), actor="t"
            )
    directory = Directory(store)
    channel = _routed_channel(
        directory,
        {"interaction": "lab-order", "target": "MSH-6.1", "kind": "ods", "subscribers": True},
    )
    _store_messages(store, _oml("A", "699X0"), _oml("B", "RYY"), _oml("C", "NOWHERE"))
    assert Processor(store, {"orders": channel}).run_once() == 3

    with store.read() as conn:
        rows = conn.execute(
            select(messages.c.control_id, messages.c.status, messages.c.error).order_by(
                messages.c.id
            )
        ).all()
        sent = conn.execute(
            select(messages.c.control_id, deliveries.c.address)
            .join(deliveries, deliveries.c.message_id == messages.c.id)
            .order_by(deliveries.c.id)
        ).all()
    assert [(r.control_id, r.status) for r in rows] == [
        ("A", "processed"),
        ("B", "processed"),
        ("C", "error"),
    ]
    assert "no mllp endpoint for ods:NOWHERE and interaction 'lab-order'" in rows[2].error
    assert [tuple(r) for r in sent] == [
        ("A", "lab-a:2575"),
        ("A", "archive:2575"),
        ("B", "lab-b:2575"),
        ("B", "archive:2575"),
    ]


def test_a_lookup_with_no_recipient_at_all_is_the_messages_error(store):
    channel = _routed_channel(Directory(store), {"interaction": "lab-order", "subscribers": True})
    _store_messages(store, _oml("A", "699X0"))
    Processor(store, {"orders": channel}).run_once()
    with store.read() as conn:
        status, error = conn.execute(select(messages.c.status, messages.c.error)).one()
    assert status == "error"
    assert "no recipient for interaction 'lab-order'" in error
