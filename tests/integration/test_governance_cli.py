"""``run.py channel``/``holds``/``reload`` against a store: what the commands refuse and
how they say so (the rules themselves are the services', tested in tests/store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from router import governance
from router.auth.users import add_user
from router.cli import main
from router.cli.commands import os_user
from router.config import load_engine
from router.governance.deploy import startup_channels
from router.store.database import Store
from router.store.schema import audit_events


def channel(kind: str) -> str:
    return CHANNEL.replace("{kind}", kind)


CHANNEL = (
    "name: orders\nsource:\n  mllp: {host: 127.0.0.1, port: 0}\n"
    "filter:\n  - field: MSH-9.1\n    equals: {kind}\n"
    "destinations:\n  lab:\n    mllp: {host: 127.0.0.1, port: 9}\n"
)


def engine_file(tmp_path: Path, store_url: str, governance_mode: str) -> Path:
    (tmp_path / "channels").mkdir()
    (tmp_path / "mappings").mkdir()
    (tmp_path / "channels" / "orders.yaml").write_text(channel("OML"))
    path = tmp_path / "engine.yaml"
    settings = {
        "store": store_url,
        "channels": "channels",
        "mappings": "mappings",
        "governance": governance_mode,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def governed(tmp_path, store_url, monkeypatch) -> Path:
    """A governed engine.yaml whose store has revision 1 of ``orders`` and two users."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    path = engine_file(tmp_path, store_url, "governed")
    store = Store(store_url)
    startup_channels(store, load_engine(path))
    with store.begin() as conn:
        add_user(conn, "erin", ["engineer"], None, actor="test")
        add_user(conn, "ada", ["approver"], None, actor="test")
    store.dispose()
    return path


def cli(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_a_rejection_without_a_reason_is_a_usage_error(governed, store_url, capsys):
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    assert cli(governed, "channel", "propose", "orders", "--actor", "erin") == 0
    capsys.readouterr()
    assert cli(governed, "channel", "reject", "orders", "2", "--reason", " ", "--actor", "ada") == 2
    assert "a rejection needs a reason, and none was given: give --reason TEXT" in (
        capsys.readouterr().err
    )
    store = Store(store_url)
    try:
        assert governance.get_revision(store, "orders", 2).state == "proposed"
    finally:
        store.dispose()


@pytest.mark.parametrize(
    "command", [("channel", "revisions", "--state", "propsed"), ("holds", "list", "--state", "x")]
)
def test_an_unknown_state_is_a_usage_error_naming_the_states(governed, capsys, command):
    """Not an empty table, which reads as "nothing waiting"."""
    with pytest.raises(SystemExit) as exited:
        cli(governed, *command)
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_an_actor_without_the_role_is_told_what_to_give(governed, capsys):
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    assert cli(governed, "channel", "propose", "orders", "--actor", "erin") == 0
    capsys.readouterr()
    assert cli(governed, "channel", "approve", "orders", "2", "--actor", "nobody") == 1
    assert capsys.readouterr().err == (
        "error: 'nobody' is not an active user; give --actor NAME, an active user with the role "
        "this needs (run.py users list)\n"
    )


def test_a_yml_channel_file_is_proposed_by_name_and_named_as_it_is(governed, capsys):
    folder = governed.parent / "channels"
    (folder / "orders.yaml").unlink()
    (folder / "orders.yml").write_text(
        channel("ORU").replace("filter:", "transform: gone:f\nfilter:")
    )
    capsys.readouterr()
    assert cli(governed, "channel", "propose", "orders", "--actor", "erin") == 2
    err = capsys.readouterr().err
    assert f"{folder / 'orders.yml'}: transform: gone:f: no mapping module 'gone'" in err, err
    (folder / "orders.yml").write_text(channel("ORU"))
    assert cli(governed, "channel", "propose", "orders", "--actor", "erin") == 0
    assert "proposed orders #2 by erin" in capsys.readouterr().out


def _deploy_events(store_url: str) -> list[tuple[str, dict]]:
    store = Store(store_url)
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(audit_events.c.actor, audit_events.c.details)
                .where(audit_events.c.action == "revision.deploy")
                .order_by(audit_events.c.id)
            ).all()
    finally:
        store.dispose()
    return [(actor, json.loads(details)) for actor, details in rows]


def test_an_open_mode_reload_claims_a_real_engineer_once_users_exist(
    tmp_path, store_url, monkeypatch, capsys
):
    """The reload's author becomes the channel's owner for the hold rules, so ``--actor``
    may not be any name: an active engineer once there are users. Before there are any, any
    name goes, and the audit keeps the OS user who ran the command beside it."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    config = engine_file(tmp_path, store_url, "open")
    path = tmp_path / "channels" / "orders.yaml"
    me = os_user()
    path.write_text(channel("ORU"))
    assert cli(config, "reload", "--actor", "anyone") == 0
    assert _deploy_events(store_url)[-1][0] == "anyone"
    assert _deploy_events(store_url)[-1][1]["os_user"] == me

    store = Store(store_url)
    with store.begin() as conn:
        add_user(conn, "erin", ["engineer"], None, actor="test")
        add_user(conn, "sam", ["support"], None, actor="test")
    store.dispose()
    path.write_text(channel("ADT"))
    capsys.readouterr()
    assert cli(config, "reload", "--actor", "anyone") == 1
    assert "'anyone' is not an active user" in capsys.readouterr().err
    assert cli(config, "reload", "--actor", "sam") == 1
    assert "'sam' needs the engineer role" in capsys.readouterr().err
    assert len(_deploy_events(store_url)) == 1  # nothing recorded by the refused ones
    assert cli(config, "reload", "--actor", "erin") == 0
    actor, details = _deploy_events(store_url)[-1]
    assert (actor, details["os_user"], details["reason"]) == ("erin", me, "reload")
