"""``run.py channel``/``holds``/``reload`` against a store: what the commands refuse and
how they say so (the rules themselves are the services', tested in tests/store)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from router import governance
from router.auth.tokens import issue_token
from router.auth.users import add_user, find_user
from router.cli import main
from router.cli.commands import os_user
from router.cli.credentials import TOKEN_VARIABLE
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
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    path = engine_file(tmp_path, store_url, "governed")
    store = Store(store_url)
    startup_channels(store, load_engine(path))
    with store.begin() as conn:
        add_user(conn, "erin", ["engineer"], None, actor="test")
        add_user(conn, "ada", ["approver"], None, actor="test")
    store.dispose()
    return path


@pytest.fixture
def as_user(store_url, monkeypatch) -> Callable[..., None]:
    """``as_user(name, issuer="test")``: the next commands present a token of ``name``'s,
    issued by ``issuer``, in $TIE_TOKEN (``as_user(None)``: none)."""

    def use(name: str | None, issuer: str = "test") -> None:
        if name is None:
            monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
            return
        store = Store(store_url)
        try:
            with store.begin() as conn:
                roles = sorted(find_user(conn, name).roles)
                token = issue_token(conn, name, roles, actor=issuer)[1]
        finally:
            store.dispose()
        monkeypatch.setenv(TOKEN_VARIABLE, token)

    return use


def cli(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def test_a_rejection_without_a_reason_is_a_usage_error(governed, store_url, capsys, as_user):
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    as_user("erin")
    assert cli(governed, "channel", "propose", "orders") == 0
    capsys.readouterr()
    as_user("ada")
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


def test_a_credential_without_the_role_is_told_what_it_needs(governed, capsys, as_user):
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    as_user("erin")
    assert cli(governed, "channel", "propose", "orders") == 0
    capsys.readouterr()
    assert cli(governed, "channel", "approve", "orders", "2") == 1
    assert capsys.readouterr().err == (
        "error: 'erin' needs the approver role (a token acts with the roles it was given)\n"
    )


def test_a_yml_channel_file_is_proposed_by_name_and_named_as_it_is(governed, capsys, as_user):
    as_user("erin")
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


def test_an_open_mode_reload_acts_as_a_real_engineer_once_users_exist(
    tmp_path, store_url, monkeypatch, capsys, as_user
):
    """The reload's author becomes the channel's owner for the hold rules, so it may not be
    any name: an active engineer's own credential once there are users. Before there are
    any, any name goes, and the audit keeps the OS user who ran the command beside it."""
    monkeypatch.delenv("TIE_STORE", raising=False)
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
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
    assert cli(config, "reload", "--actor", "erin") == 1
    assert "a name is only a claim: give that user's own credential" in capsys.readouterr().err
    as_user("sam")
    assert cli(config, "reload") == 1
    assert "'sam' needs the engineer role" in capsys.readouterr().err
    assert len(_deploy_events(store_url)) == 1  # nothing recorded by the refused ones
    as_user("erin")
    assert cli(config, "reload") == 0
    actor, details = _deploy_events(store_url)[-1]
    assert (actor, details["os_user"], details["reason"]) == ("erin", me, "reload")


def _approvals(store_url: str) -> list[tuple[str, str]]:
    store = Store(store_url)
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(audit_events.c.action, audit_events.c.actor)
                .where(audit_events.c.action.like("revision.approve%"))
                .order_by(audit_events.c.id)
            ).all()
    finally:
        store.dispose()
    return [tuple(row) for row in rows]


def test_an_approval_on_the_command_line_needs_the_approvers_own_credential(
    governed, store_url, capsys, as_user
):
    """``--actor ada`` is a claim anyone with a shell could make: it approves nothing. Ada's
    own token does, unless its issuer is the author (the API's credential-maker rule)."""
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    as_user("erin")
    assert cli(governed, "channel", "propose", "orders") == 0
    assert cli(governed, "channel", "approve", "orders", "2", "--actor", "ada") == 1
    assert "--actor ada but the credential given is erin's" in capsys.readouterr().err
    as_user(None)
    assert cli(governed, "channel", "approve", "orders", "2", "--actor", "ada") == 1
    err = capsys.readouterr().err
    assert "on the command line a name is only a claim" in err, err
    assert "$TIE_TOKEN" in err and "or use the console or the API" in err
    as_user("ada", issuer="erin")
    assert cli(governed, "channel", "approve", "orders", "2") == 1
    assert "ada acts with a credential erin made" in capsys.readouterr().err
    store = Store(store_url)
    try:
        assert governance.get_revision(store, "orders", 2).state == "proposed"
    finally:
        store.dispose()
    assert _approvals(store_url) == [("revision.approve-refused", "ada")]

    as_user("ada")
    assert cli(governed, "channel", "approve", "orders", "2", "--actor", "Ada") == 0
    assert _approvals(store_url)[-1] == ("revision.approve", "ada")


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)  # the store plays no part
def test_at_a_terminal_the_actor_is_asked_for_their_password(
    governed, store_url, capsys, monkeypatch, as_user
):
    import router.cli.credentials as credentials

    store = Store(store_url)
    with store.begin() as conn:
        add_user(conn, "bob", ["approver"], "bobs own password", actor="bob")
    store.dispose()
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    as_user("erin")
    assert cli(governed, "channel", "propose", "orders") == 0
    as_user(None)
    asked = []
    monkeypatch.setattr(credentials.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(credentials.getpass, "getpass", lambda prompt: asked.append(prompt) or "x")
    capsys.readouterr()
    assert cli(governed, "channel", "approve", "orders", "2", "--actor", "bob") == 1
    assert capsys.readouterr().err == "error: bob: wrong password or not an active user\n"
    assert asked == ["password for bob: "]
    monkeypatch.setattr(credentials, "ask_password", lambda name: "bobs own password")
    assert cli(governed, "channel", "approve", "orders", "2", "--actor", "bob") == 0
    assert _approvals(store_url) == [("revision.approve", "bob")]


# Every command whose actor the four-eyes rules count: authors, requesters, approvers.
COUNTED = [
    ("channel", "propose", "orders"),
    ("channel", "approve", "orders", "2"),
    ("channel", "reject", "orders", "2", "--reason", "no"),
    ("channel", "rollback", "orders", "1"),
    ("reload",),
    ("holds", "request", "orders/lab"),
    ("holds", "approve", "1"),
    ("holds", "reject", "1", "--reason", "no"),
]


def test_every_governance_action_refuses_a_claimed_actor(governed, store_url, capsys):
    """None is a claim: each exits 1 before it records anything (one store for all)."""
    before = _events(store_url)
    for command in COUNTED:
        assert cli(governed, *command, "--actor", "ada") == 1, command
        assert "a name is only a claim" in capsys.readouterr().err, command
    assert _events(store_url) == before


def _events(store_url: str) -> list[tuple[str, str]]:
    store = Store(store_url)
    try:
        with store.read() as conn:
            return [
                tuple(r) for r in conn.execute(select(audit_events.c.id, audit_events.c.action))
            ]
    finally:
        store.dispose()


def test_check_says_what_the_governed_engine_runs_beside_the_file_on_disk(
    governed, capsys, as_user
):
    """Governed, the file is a proposal: check validates it, and says which revision the
    engine runs instead, and that the file differs from it."""
    assert cli(governed, "check") == 0
    assert "governed: each file is its channel's running revision (1 channel(s))" in (
        capsys.readouterr().out
    )
    (governed.parent / "channels" / "orders.yaml").write_text(channel("ORU"))
    assert cli(governed, "check") == 0
    out = capsys.readouterr().out
    assert "ok  orders: source mllp" in out
    assert "governed: the engine runs the approved revisions in the store, not these files" in out
    assert (
        "  orders: the running engine uses revision #1 (deployed, approved by bootstrap; "
        "mapping code none); on disk its text differs (mapping code none): a proposal "
        "(run.py channel diff orders; run.py channel propose orders)\n"
    ) in out


def test_check_warns_when_the_approved_revision_would_not_run(governed, capsys, as_user):
    code = governed.parent / "mappings" / "tag.py"
    code.write_text("def same(message):\n    return message.raw\n")
    text = channel("OML").replace("filter:", "transform: tag:same\nfilter:")
    (governed.parent / "channels" / "orders.yaml").write_text(text)
    as_user("erin")
    assert cli(governed, "channel", "propose", "orders") == 0
    as_user("ada")
    assert cli(governed, "channel", "approve", "orders", "2") == 0
    code.write_text("def same(message):\n    return b'edited'\n")
    capsys.readouterr()
    assert cli(governed, "check") == 0
    out = capsys.readouterr().out
    assert "  orders: its newest is revision #2 (approved, approved by ada;" in out
    assert "on disk the mapping code it names differs" in out
    assert (
        "  warning  orders: revision #2 would not run; the engine runs revision #1 instead, "
        "a fallback (/health, the dashboard and tie_channel_revision_fallback show it):\n"
        "    revision #2 cannot run: its mapping code under"
    ) in out
