"""The engine lock on SQLite: engines hold ``<database>.engine-lock`` shared from start to
stop, ``run.py db restore`` holds it exclusively from its first check to its end. An engine
started during a restore must not run on (or migrate) a store half restored."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from pathlib import Path

import pytest
import yaml
from tie_testing import RunningEngine, engine_config

from router.cli import main
from router.config import ChannelConfig, EngineConfig
from router.engine import Engine
from router.store import file_lock
from router.store import restore as restore_module
from router.store.backup import back_up
from router.store.opening import open_store
from router.store.presence import StoreInUse
from router.store.restore import RestoreError, restore

pytestmark = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)


def inbound() -> ChannelConfig:
    return ChannelConfig.model_validate(
        {"name": "inbound", "source": {"mllp": {"host": "127.0.0.1", "port": 0}}}
    )


def backed_up(tmp_path: Path, store_url: str) -> EngineConfig:
    """The store's config, with a backup of it in ``tmp_path / "backup"``."""
    config = engine_config(tmp_path, store_url)
    store = open_store(config)
    try:
        back_up(store, tmp_path / "backup")
    finally:
        store.dispose()
    return config


async def start_and_stop(engine: Engine) -> None:
    """Start the engine (as run.py serve would: a refusal to start raises), then stop it."""
    try:
        await engine.start(http=False)
    finally:
        await engine.stop()


def database(store_url: str) -> Path:
    return Path(store_url.removeprefix("sqlite:///"))


def test_an_engine_started_during_a_restore_refuses_to_start(tmp_path, store_url, monkeypatch):
    config = backed_up(tmp_path, store_url)
    staged, go = threading.Event(), threading.Event()
    stage = restore_module._stage_blobs

    def stage_then_wait(*args):  # the restore, paused between its check and the swap
        staging = stage(*args)
        staged.set()
        assert go.wait(15)
        return staging

    monkeypatch.setattr(restore_module, "_stage_blobs", stage_then_wait)
    failed: list[BaseException] = []

    def restoring() -> None:
        store = open_store(config)
        try:
            restore(store, tmp_path / "backup", actor="test", force=True)
        except BaseException as exc:
            failed.append(exc)
        finally:
            store.dispose()

    thread = threading.Thread(target=restoring)
    thread.start()
    try:
        assert staged.wait(15)
        with pytest.raises(StoreInUse, match=r"a restore of this store is running .*engine-lock"):
            asyncio.run(start_and_stop(Engine(config, {"inbound": inbound()})))
    finally:
        go.set()
        thread.join(15)
    assert not thread.is_alive() and failed == []
    RunningEngine(config, {"inbound": inbound()}).stop()  # once it has finished


def test_a_restore_refuses_while_an_engine_runs_naming_it(tmp_path, store_url):
    config = backed_up(tmp_path, store_url)
    running = RunningEngine(config, {"inbound": inbound()})
    store = open_store(config)
    try:
        with pytest.raises(RestoreError) as refused:
            restore(store, tmp_path / "backup", actor="test", force=True)
        said = str(refused.value)
        assert f"{database(store_url)}.engine-lock" in said
        assert f"host {socket.gethostname()} pid {os.getpid()}, started" in said
        assert "stop every engine of the store first. Nothing was changed." in said
        running.stop()
        restore(store, tmp_path / "backup", actor="test", force=True)
    finally:
        store.dispose()


def test_other_commands_run_during_a_restore(tmp_path, store_url, capsys):
    """Only engines and restores take the lock: ``db status`` runs while a restore holds it."""
    config = tmp_path / "engine.yaml"
    config.write_text(yaml.safe_dump({"store": store_url, "channels": str(tmp_path)}))
    held = file_lock.try_lock(database(store_url), exclusive=True)
    assert held is not None
    try:
        assert main(["--config", str(config), "db", "status"]) == 0
    finally:
        file_lock.unlock(held)
