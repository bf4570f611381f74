"""``run.py db backup``, taken while the engine works, restored by ``run.py db restore`` into
a fresh folder (or, on PostgreSQL, a fresh database) and started: nothing acknowledged
before the backup is lost, and the work in hand at that instant is done again. Then the
restore's refusals: an engine running, a store holding messages, a damaged backup."""

from __future__ import annotations

import sqlite3
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
from router.store.backup import back_up
from router.store.database import Store
from router.store.inbound import Inbound, write_inbound
from router.store.migrate import upgrade
from router.store.opening import open_store
from router.store.presence import engine_running
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
    """``run.py db restore`` into a new SQLite file, or a new PostgreSQL database (the
    store's schema); the engine.yaml of the new folder."""
    config = workspace(root, _new_store(root, store_url, restored_url), lab_port)
    assert main(["--config", str(config), "db", "restore", str(backup)]) == 0
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


# ``run.py db restore``: a backup put back in place of the store engine.yaml names.


def _source(tmp_path: Path, store_url: str, *control_ids: str) -> tuple[Path, Store]:
    """A store holding ``control_ids`` (each a blob) and an audit event, migrated."""
    config = workspace(tmp_path / "a", store_url, lab_port=1)
    store = open_store(load_engine(config))
    upgrade(store)
    _receive(store, *control_ids)
    with store.begin() as conn:
        audit.append(conn, "test", "pause", "channel:held", {"reason": "before the backup"})
    return config, store


def _receive(store: Store, *control_ids: str) -> None:
    with store.begin() as conn:
        write_inbound(
            conn, [Inbound("orders", store.blobs.put(message(c).encode())) for c in control_ids]
        )


def _control_ids(store: Store) -> list[str]:
    """The MSH-10 of each message, read from its blob."""
    with store.read() as conn:
        rows = conn.execute(select(messages).order_by(messages.c.id)).all()
    payloads = [store.blobs.payload(m.raw, m.blob_sha256, m.size) for m in rows]
    return [p.read().split(b"|")[9].decode() for p in payloads]


@pytest.fixture
def empty_target(tmp_path: Path, store_url: str, restored_url: str) -> Path:
    """The engine.yaml of a store with nothing in it: a new SQLite file, or a new PostgreSQL
    database (the store's schema, as the backup holds it, not there yet)."""
    return workspace(tmp_path / "b", _new_store(tmp_path / "b", store_url, restored_url), 1)


def _new_store(root: Path, store_url: str, restored_url: str) -> str:
    if store_url.startswith("sqlite"):
        return f"sqlite:///{root / 'data' / 'tie.db'}"
    url = make_url(restored_url).set(query=make_url(store_url).query)
    return url.render_as_string(hide_password=False)


def test_a_backup_restores_into_an_empty_store_checked_and_audited(
    tmp_path, store_url, empty_target, capsys
):
    _, source = _source(tmp_path, store_url, "ORD-1", "ORD-2")
    try:
        back_up(source, tmp_path / "backup")
    finally:
        source.dispose()

    code = main(["--config", str(empty_target), "db", "restore", str(tmp_path / "backup")])
    out = capsys.readouterr()
    assert code == 0, out
    assert "blobs       2 file(s)" in out.out and "replaced" not in out.out

    restored = open_store(load_engine(empty_target))
    try:
        assert _control_ids(restored) == ["ORD-1", "ORD-2"]  # the payloads, from the blobs
        verdict = audit.verify(restored)
        with restored.read() as conn:
            (last,) = audit.events(conn, audit.EventFilter(limit=1))
    finally:
        restored.dispose()
    assert verdict.ok and verdict.events == 2
    assert last["action"] == "restore"
    assert last["details"]["folder"] == str(tmp_path / "backup")
    assert "os_user" in last["details"]


def test_a_restore_in_place_is_refused_while_an_engine_runs_then_without_force(
    tmp_path, store_url, capsys
):
    """Restored in place (the 3 a.m. case): refused while an engine runs against the store
    (SQLite: it has the file open; PostgreSQL: it holds the engine lock), then while the
    store holds messages; with ``--force`` the messages received since the backup are gone
    and the replaced files are kept aside."""
    config, store = _source(tmp_path, store_url, "ORD-1")
    command = ["--config", str(config), "db", "restore", str(tmp_path / "backup")]
    try:
        back_up(store, tmp_path / "backup")
        _receive(store, "LATE-1")
        with store.read() as conn, engine_running(store):
            conn.execute(select(1))
            assert main([*command, "--force"]) == 1
    finally:
        store.dispose()
    err = capsys.readouterr().err
    assert "stop every engine of the store first" in err and "Nothing was changed" in err

    assert main(command) == 1
    assert "the store holds 2 message(s): --force replaces them" in capsys.readouterr().err

    assert main([*command, "--force"]) == 0
    out = capsys.readouterr().out
    assert "replaced    2 message(s) in the store" in out
    assert "replaced    blob folder moved to" in out
    if store.is_sqlite:
        assert "replaced    database file moved to" in out
    store = open_store(load_engine(config))
    try:
        assert _control_ids(store) == ["ORD-1"]
        assert audit.verify(store).ok
    finally:
        store.dispose()


def test_an_incomplete_or_damaged_backup_is_refused_and_the_store_left_alone(
    tmp_path, store_url, empty_target, capsys
):
    _, source = _source(tmp_path, store_url, "ORD-1", "ORD-2")
    try:
        back_up(source, tmp_path / "backup")
    finally:
        source.dispose()
    command = ["--config", str(empty_target), "db", "restore", str(tmp_path / "backup")]
    first, second = sorted((tmp_path / "backup" / "blobs").glob("??/??/*"))
    kept = first.read_bytes()
    first.unlink()
    assert main(command) == 1
    err = capsys.readouterr().err
    assert "the backup is incomplete: 1 blob(s) its database names are not in" in err
    assert "Nothing was changed" in err

    first.write_bytes(kept)
    second.write_bytes(b"not what was stored")
    assert main(command) == 1
    err = capsys.readouterr().err
    assert f"1 blob(s) whose content is not their hash (first {second.name})" in err
    assert "Nothing was changed" in err
    assert not (empty_target.parent / "blobs").exists()
    assert not (empty_target.parent / "data" / "tie.db").exists()


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the copy is a plain file
def test_a_backup_from_a_newer_version_is_refused(tmp_path, store_url, empty_target, capsys):
    _, source = _source(tmp_path, store_url)
    try:
        back_up(source, tmp_path / "backup")
    finally:
        source.dispose()
    with sqlite3.connect(tmp_path / "backup" / "tie.db") as copy:
        copy.execute("INSERT INTO alembic_version VALUES ('from_the_future')")
    copy.close()

    assert main(["--config", str(empty_target), "db", "restore", str(tmp_path / "backup")]) == 1
    assert "the backup's schema is newer than this version" in capsys.readouterr().err


# The migration is the engine's on either store; migrating PostgreSQL twice costs seconds.
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_backup_of_an_earlier_schema_is_migrated_as_it_is_restored(
    tmp_path, empty_target, capsys
):
    earlier = f"sqlite:///{tmp_path / 'earlier.db'}"  # migrated by hand, not the template
    store = open_store(load_engine(workspace(tmp_path / "a", earlier, lab_port=1)))
    try:
        upgrade(store, "retention_0001")  # retention_0002 came later
        back_up(store, tmp_path / "backup")
    finally:
        store.dispose()

    assert main(["--config", str(empty_target), "db", "restore", str(tmp_path / "backup")]) == 0
    assert "migrated    retention_0002" in capsys.readouterr().out
    assert main(["--config", str(empty_target), "db", "status"]) == 0  # up to date


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # pg_restore checks its own
def test_a_damaged_database_copy_is_refused(tmp_path, store_url, empty_target, capsys):
    _, source = _source(tmp_path, store_url, "ORD-1")
    try:
        back_up(source, tmp_path / "backup")
    finally:
        source.dispose()
    copy = tmp_path / "backup" / "tie.db"
    with open(copy, "r+b") as damaging:  # a page in the middle of the file overwritten
        damaging.seek(copy.stat().st_size // 2)
        damaging.write(b"\xff" * 4096)

    assert main(["--config", str(empty_target), "db", "restore", str(tmp_path / "backup")]) == 1
    err = capsys.readouterr().err
    assert "Nothing was changed" in err and "damaged" in err
    assert not (empty_target.parent / "data" / "tie.db").exists()
