"""``run.py db status``: the store as an operator sees it, without migrating it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from alembic.script import ScriptDirectory

from router.cli import main
from router.store.database import Store
from router.store.inbound import Inbound, utcnow, write_inbound
from router.store.migrate import alembic_config, upgrade

Cli = Callable[..., tuple[int, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("TIE_STORE", raising=False)

    def run(config: Path, *args: str) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        return code, capsys.readouterr().out

    return run


def workspace(root: Path, store_url: str) -> Path:
    (root / "channels").mkdir()
    config = root / "engine.yaml"
    config.write_text(yaml.safe_dump({"store": store_url, "channels": "channels"}))
    return config


def test_status_of_an_up_to_date_store_gives_its_backlog_and_exit_0(tmp_path, store_url, cli):
    config = workspace(tmp_path, store_url)
    store = Store(store_url)
    try:
        upgrade(store)
        with store.begin() as conn:
            write_inbound(
                conn,
                [
                    Inbound("orders", b"MSH|^~\\&|A", received_at=utcnow() - timedelta(days=2)),
                    Inbound("orders", b"MSH|^~\\&|B"),
                ],
            )
    finally:
        store.dispose()

    code, out = cli(config, "db", "status", "--json")
    status = json.loads(out)

    assert code == 0
    assert status["reachable"] and status["schema"] == "current"
    assert status["pending"] == [] and status["unknown"] == []
    assert status["revisions"] == status["heads"]
    assert status["messages"] == 2
    assert status["backlog"]["unprocessed"] == 2
    assert status["oldest_message"] < (utcnow() - timedelta(days=1)).isoformat()
    assert status["database_bytes"] > 0
    code, text = cli(config, "db", "status")
    assert code == 0
    assert "schema      up to date" in text
    assert "2 message(s) received, not processed" in text


def test_status_of_a_store_behind_names_the_pending_migrations_changes_nothing_exit_1(
    tmp_path, empty_store_url, cli
):
    config = workspace(tmp_path, empty_store_url)
    store = Store(empty_store_url)
    try:
        upgrade(store, "0001")
    finally:
        store.dispose()
    later = {
        s.revision
        for s in ScriptDirectory.from_config(alembic_config(empty_store_url)).walk_revisions()
    }
    later.discard("0001")

    code, out = cli(config, "db", "status", "--json")
    again, _ = cli(config, "db", "status", "--json")

    status = json.loads(out)
    assert (code, again) == (1, 1)  # the first status migrated nothing
    assert status["schema"] == "behind"
    assert status["revisions"] == ["0001"]
    assert {p["revision"] for p in status["pending"]} == later
    assert status["backlog"] is None
    code, text = cli(config, "db", "status")
    assert f"schema      BEHIND: {len(later)} migration(s) pending" in text
    assert "  pending   replay_0001" in text


def test_status_of_a_store_a_newer_tie_migrated_exits_1(tmp_path, store_url, cli):
    config = workspace(tmp_path, store_url)
    store = Store(store_url)
    try:
        upgrade(store)
        with store.begin() as conn:
            conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('future_0001')")
    finally:
        store.dispose()

    code, out = cli(config, "db", "status", "--json")

    assert code == 1
    assert json.loads(out)["schema"] == "ahead"
    assert json.loads(out)["unknown"] == ["future_0001"]


def test_status_of_a_store_that_cannot_be_reached_exits_2(tmp_path, cli):
    config = workspace(tmp_path, "postgresql+psycopg://tie@127.0.0.1:1/tie")

    code, out = cli(config, "db", "status", "--json")

    assert code == 2
    assert json.loads(out)["reachable"] is False
    assert "Connection refused" in json.loads(out)["error"]


def test_status_of_a_sqlite_file_that_is_not_there_does_not_create_it(tmp_path, cli):
    config = workspace(tmp_path, "sqlite:///data/tie.db")

    code, out = cli(config, "db", "status")

    assert code == 2
    assert "no database file at" in out
    assert not (tmp_path / "data" / "tie.db").exists()
