"""Retention as it runs: on the engine's schedule, and by hand with ``run.py prune``."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hl7.client import MLLPClient
from sqlalchemy import func, select, update
from tie_testing import RunningEngine, channel, engine_config, hl7_message, wait_until

from router import metrics
from router.cli import main
from router.config import load_channels, load_engine
from router.connectors.hl7_inbound import hl7_inbound
from router.engine import compile_channels, open_store
from router.processing import Processor
from router.retention import pruning_lock
from router.store.idempotency import KEY_LIFETIME, claim
from router.store.inbound import utcnow, write_inbound
from router.store.migrate import upgrade
from router.store.schema import audit_events, idempotency_keys, messages

m = messages.c


def _count(store, *where) -> int:
    with store.read() as conn:
        return conn.scalar(select(func.count()).select_from(messages).where(*where)) or 0


def _prune_events(store) -> list[tuple[str, dict]]:
    with store.read() as conn:
        rows = conn.execute(
            select(audit_events.c.actor, audit_events.c.details).where(
                audit_events.c.action == "retention.prune"
            )
        )
        return [(r.actor, json.loads(r.details)) for r in rows]


def _pruned_count() -> float:
    value = metrics.REGISTRY.get_sample_value("tie_messages_pruned_total", {"channel": "orders"})
    return value or 0.0


def test_the_engine_prunes_on_its_schedule(tmp_path, store_url, hl7_samples):
    orders = channel(
        {
            "name": "orders",
            "source": {"mllp": {"port": 0}},
            "destinations": {},
            "retention": {"keep": "1d"},
        }
    )
    config = engine_config(tmp_path, store_url, retention={"every": "200ms"})
    pruned_before = _pruned_count()
    running = RunningEngine(config, {"orders": orders})
    try:
        sample = hl7_samples["OML_O21_nhs_nwgmsa_v251"]
        with MLLPClient("127.0.0.1", running.port("orders")) as client:
            for control_id in ("AGED", "FRESH"):
                client.send_message(hl7_message(sample, control_id))
        wait_until(lambda: _count(running.store, m.status == "processed") == 2)
        with running.store.begin() as conn:
            conn.execute(
                update(messages)
                .where(m.control_id == "AGED")
                .values(received_at=utcnow() - timedelta(days=2))
            )

        wait_until(lambda: _count(running.store) == 1)

        with running.store.read() as conn:
            assert list(conn.scalars(select(m.control_id))) == ["FRESH"]
        ((actor, details),) = _prune_events(running.store)
        assert (actor, details["messages"]) == ("tie-retention", 1)
        wait_until(lambda: _pruned_count() == pruned_before + 1)  # counted after the commit
    finally:
        running.stop()


@pytest.fixture
def workspace(tmp_path: Path, store_url: str) -> Path:
    """engine.yaml and one channel that keeps messages 30 days and archives them."""
    (tmp_path / "channels").mkdir()
    (tmp_path / "mappings").mkdir()
    engine = {"store": store_url, "channels": "channels", "mappings": "mappings"}
    orders = {
        "name": "orders",
        "source": {"mllp": {"host": "127.0.0.1", "port": 0}},
        "destinations": {},
        "retention": {"keep": "30d", "archive": "../archive"},
    }
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(engine))
    (tmp_path / "channels" / "orders.yaml").write_text(yaml.safe_dump(orders))
    return tmp_path / "engine.yaml"


def test_prune_by_hand_previews_then_removes_and_archives(
    workspace, hl7_samples, capsys, monkeypatch
):
    monkeypatch.delenv("TIE_STORE", raising=False)
    config = load_engine(workspace)
    store = open_store(config)
    upgrade(store)
    sample = hl7_samples["OML_O21_nhs_nwgmsa_v251"]
    aged = utcnow() - timedelta(days=31)
    with store.begin() as conn:
        write_inbound(
            conn,
            [
                hl7_inbound("orders", hl7_message(sample, "AGED"), received_at=aged),
                hl7_inbound("orders", hl7_message(sample, "FRESH")),
            ],
        )
    Processor(store, compile_channels(config, load_channels(config.channels))).run_once()

    def prune(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(workspace), "prune", *args])
        return code, capsys.readouterr().out

    code, out = prune("--dry-run", "--json")
    assert code == 0
    assert [(r["channel"], r["messages"], r["dry_run"]) for r in json.loads(out)] == [
        ("orders", 1, True)
    ]
    assert _count(store) == 2

    code, out = prune("--json", "--actor", "alice")
    assert code == 0
    (result,) = json.loads(out)
    assert result["messages"] == 1
    (archive,) = result["archives"]
    assert Path(archive).parent == workspace.parent / "archive" / "orders"
    assert _count(store) == 1
    assert [(a, d["messages"]) for a, d in _prune_events(store)] == [("alice", 1)]

    assert main(["--config", str(workspace), "prune", "--channel", "nope"]) != 0
    store.dispose()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_prune_by_hand_refuses_while_a_node_prunes(workspace, hl7_samples, monkeypatch):
    """On PostgreSQL the nodes prune one at a time under an advisory lock; by hand too, or
    two prunes at once would remove, archive and audit the same messages side by side."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    config = load_engine(workspace)
    store = open_store(config)
    upgrade(store)
    aged = utcnow() - timedelta(days=31)
    sample = hl7_samples["OML_O21_nhs_nwgmsa_v251"]
    with store.begin() as conn:
        write_inbound(
            conn,
            [
                hl7_inbound("orders", hl7_message(sample, "AGED"), received_at=aged),
                hl7_inbound("orders", hl7_message(sample, "FRESH")),
            ],
        )
    Processor(store, compile_channels(config, load_channels(config.channels))).run_once()
    node = open_store(config)  # another node's connection
    try:
        with pruning_lock(node) as leading:
            assert leading
            assert main(["--config", str(workspace), "prune"]) != 0
            assert _count(store) == 2
        assert main(["--config", str(workspace), "prune"]) == 0
        assert _count(store) == 1
    finally:
        node.dispose()
        store.dispose()


def test_the_engines_retention_run_deletes_expired_idempotency_keys(tmp_path, store_url):
    """The API's replay keys are kept a day (router/store/idempotency.py), then go with
    retention's run, whether or not a channel keeps its messages for a time."""
    config = engine_config(tmp_path, store_url, retention={"every": "200ms"})
    running = RunningEngine(config, {})
    try:
        now = utcnow()
        with running.store.begin() as conn:
            for key, age in (("old", KEY_LIFETIME + timedelta(minutes=1)), ("new", timedelta(0))):
                claim(conn, "sam", key, "/api/deliveries/resend", "0" * 64, now - age)

        def keys() -> list[str]:
            with running.store.read() as conn:
                return list(conn.scalars(select(idempotency_keys.c.key)))

        wait_until(lambda: keys() == ["new"])
    finally:
        running.stop()
