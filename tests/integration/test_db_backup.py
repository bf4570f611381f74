"""``run.py db backup``, taken while the engine works, restored into a fresh folder (and, on
PostgreSQL, a fresh database with ``pg_restore``) and started: nothing acknowledged before
the backup is lost, and the work in hand at that instant is done again."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import hl7.client
import pytest
import yaml
from sqlalchemy import create_engine, make_url, select, text
from tie_testing import Hl7Receiver, RunningEngine, wait_until

from router import audit
from router.channel_control import set_paused
from router.cli import main
from router.config import load_engine
from router.store import backup as backup_module
from router.store.backup import libpq_url
from router.store.database import Store
from router.store.inbound import Inbound, write_inbound
from router.store.migrate import upgrade
from router.store.opening import open_store
from router.store.schema import deliveries, messages

NOTE = "N" * 3000  # above the 1 KiB blob threshold: every message is a blob


def message(control_id: str) -> str:
    return (
        f"MSH|^~\\&|EPR|TRUST|LAB|LAB|20261201000000||ORM^O01|{control_id}|P|2.3\r"
        f"PID|1||{control_id}^^^NHS^NH\rNTE|1||{NOTE}\r"
    )


def workspace(root: Path, store_url: str, lab_port: int) -> Path:
    (root / "channels").mkdir(parents=True)
    engine = {
        "store": store_url,
        "channels": "channels",
        "mappings": "channels",
        "http": {"host": "127.0.0.1", "port": 0},
        "node": "backup-test",
        "dispatch": {"poll_interval": "100ms", "lease": "30s"},
        "blobs": {"threshold": "1KiB", "directory": "blobs"},
    }
    (root / "engine.yaml").write_text(yaml.safe_dump(engine))
    for name in ("orders", "held"):
        channel = {
            "name": name,
            "source": {"mllp": {"host": "127.0.0.1", "port": 0}},
            "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": lab_port}}},
        }
        (root / "channels" / f"{name}.yaml").write_text(yaml.safe_dump(channel))
    return root / "engine.yaml"


def send(port: int, control_id: str) -> None:
    with hl7.client.MLLPClient("127.0.0.1", port) as client:
        assert b"MSA|AA" in client.send_message(message(control_id))


@pytest.fixture
def restored_url(store_url: str) -> Iterator[str]:
    """Where the backup is restored: a new SQLite file, or a new PostgreSQL database."""
    if store_url.startswith("sqlite"):
        yield ""
        return
    name = f"tie_restore_{uuid4().hex[:12]}"
    admin = create_engine(store_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(store_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def restore(backup: Path, root: Path, store_url: str, restored_url: str, lab_port: int) -> Path:
    """The documented restore: the database file (or pg_restore), then the blobs; the
    engine.yaml of the new folder."""
    if store_url.startswith("sqlite"):
        (root / "data").mkdir(parents=True)
        shutil.copy2(backup / "tie.db", root / "data" / "tie.db")
        url = f"sqlite:///{root / 'data' / 'tie.db'}"
    else:
        target, _ = libpq_url(make_url(restored_url))
        done = subprocess.run(
            ["pg_restore", "--no-owner", f"--dbname={target}", str(backup / "tie.dump")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        url = restored_url
    config = workspace(root, url, lab_port)
    shutil.copytree(backup / "blobs", root / "blobs")
    return config


def test_a_backup_taken_while_the_engine_works_restores_and_resumes_its_work(
    tmp_path, store_url, restored_url, capsys
):
    gate = threading.Event()
    lab_a = Hl7Receiver(answer=lambda _m: (gate.wait(30), "AA")[1])  # holds the first send
    config_a = workspace(tmp_path / "a", store_url, lab_a.port)
    engine_a = RunningEngine(load_engine(config_a), None)
    try:
        set_paused(engine_a.store, "held", True, actor="test", reason="backlog at backup time")
        send(engine_a.port("orders"), "ORD-1")
        send(engine_a.port("held"), "HELD-1")
        send(engine_a.port("held"), "HELD-2")
        wait_until(lambda: _statuses(engine_a.store) == {"sending"})  # leased, in flight

        code = main(["--config", str(config_a), "db", "backup", str(tmp_path / "backup")])
        assert code == 0, capsys.readouterr()
    finally:
        gate.set()
        engine_a.stop()
        lab_a.stop()

    lab_b = Hl7Receiver()
    config_b = restore(tmp_path / "backup", tmp_path / "b", store_url, restored_url, lab_b.port)
    engine_b = RunningEngine(load_engine(config_b), None)
    try:
        set_paused(engine_b.store, "held", False, actor="test", reason="restored")
        # The lease held at backup time is released at start (same node): sent again, and
        # the messages received but not processed at backup time are processed now.
        wait_until(lambda: sorted(lab_b.control_ids()) == ["HELD-1", "HELD-2", "ORD-1"])
        assert audit.verify(engine_b.store).ok
    finally:
        engine_b.stop()
        lab_b.stop()
    # ORD-1's payload, a blob written by the engine before the backup, went out whole.
    assert all(str(m.segment("NTE")[3]) == NOTE for m in lab_b.received)


def _statuses(store: Store) -> set[str]:
    with store.read() as conn:
        return set(conn.scalars(select(deliveries.c.status)))


def test_a_blob_written_while_the_database_is_copied_is_in_the_backup(
    tmp_path, store_url, monkeypatch
):
    """The blobs are copied before the database, then those the copy names that were
    written meanwhile: a message committed between the two is in the copy with its blob."""
    store = open_store(load_engine(workspace(tmp_path, store_url, lab_port=1)))
    upgrade(store)
    copy_name = "_copy_sqlite" if store.is_sqlite else "_dump_postgres"
    copy_database = getattr(backup_module, copy_name)

    def traffic_then_copy(live: Store, target: Path) -> None:
        with live.begin() as conn:
            write_inbound(conn, [Inbound("orders", live.blobs.put(message("LATE").encode()))])
        copy_database(live, target)

    monkeypatch.setattr(backup_module, copy_name, traffic_then_copy)
    try:
        made = backup_module.back_up(store, tmp_path / "backup")
        with store.read() as conn:
            (late,) = conn.scalars(select(messages.c.blob_sha256))
    finally:
        store.dispose()

    assert late is not None
    assert made.missing == [] and made.blobs == 1
    assert (tmp_path / "backup" / "blobs" / late[:2] / late[2:4] / late).exists()
