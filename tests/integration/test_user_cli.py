"""``run.py users``: add (password from stdin, never argv), list, disable, token and revoke;
each audited with the acting user. And the first start's hint when no user exists."""

from __future__ import annotations

import io
import json
import logging

import pytest
import yaml
from sqlalchemy import select
from tie_testing import RunningEngine, engine_config

from router.auth.token_use import use_token
from router.auth.tokens import token_holder
from router.auth.users import check_password
from router.cli import credentials, main
from router.cli.commands import os_user
from router.store.database import Store
from router.store.schema import audit_events, users

PASSWORD = "a long enough password"
ADA = ("--actor", "ada")


@pytest.fixture
def config(tmp_path, store_url, monkeypatch):
    monkeypatch.delenv("TIE_STORE", raising=False)
    (tmp_path / "channels").mkdir()
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump({"store": store_url, "channels": "channels"}))
    return path


def _as_ada(patch: pytest.MonkeyPatch) -> None:
    """Ada, the admin, gives her password when a command acting as her asks for it."""
    patch.setattr(credentials, "ask_password", lambda name: PASSWORD if name == "ada" else None)


def _run(config, capsys, *args: str, stdin: str = "") -> tuple[int, str]:
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(stdin))
        _as_ada(patch)
        code = main(["--config", str(config), "users", *args])
    return code, capsys.readouterr().out


def _refusal(config, capsys, *args: str) -> str:
    """What a refused ``users`` command says (it exits 1); its standard input is no
    terminal and holds a password too short."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO("short\n"))
        _as_ada(patch)
        assert main(["--config", str(config), "users", *args]) == 1
    return capsys.readouterr().err


def test_users_lifecycle_on_the_command_line(config, store_url, capsys):
    code, out = _run(
        config,
        capsys,
        "add",
        "ada",
        "--role",
        "admin",
        "--password-stdin",
        "--actor",
        "root",
        stdin=PASSWORD + "\n",
    )
    assert (code, out) == (0, "added ada (admin)\n")
    code, _ = _run(
        config,
        capsys,
        "add",
        "sam",
        "--role",
        "support",
        "--role",
        "viewer",
        "--password-stdin",
        "--actor",
        "ada",
        stdin="short\n",
    )
    assert code == 1, "a password of fewer than 12 characters is refused"
    bot = ("add", "bot", "--role", "viewer", "--no-password")
    assert _run(config, capsys, *bot)[0] == 1, "once there are users, the OS user is none"
    assert _run(config, capsys, *bot, "--actor", "ada")[0] == 0
    assert _run(config, capsys, "add", "eve", "--role", "wizard", "--no-password", *ADA)[0] == 1

    code, out = _run(config, capsys, "token", "bot", "--role", "viewer", "--expires", "90d", *ADA)
    assert code == 0
    token = out.splitlines()[-1]
    assert token.startswith("tie_") and "token 1 for bot" in out
    assert _run(config, capsys, "token", "bot", "--role", "admin", *ADA)[0] == 1

    code, out = _run(config, capsys, "list", "--json")
    listed = {u["name"]: u for u in json.loads(out)}
    assert listed["ada"]["roles"] == ["admin"] and listed["ada"]["password"] is True
    assert listed["bot"]["tokens"] == 1 and listed["bot"]["password"] is False
    assert listed["ada"]["last_sign_in_at"] is None, "never signed in to the console"
    assert "LAST_SIGN_IN_AT" in _run(config, capsys, "list")[1]

    store = Store(store_url)
    try:
        with store.read() as conn:
            assert token_holder(conn, token) == ("bot", frozenset({"viewer"}))
        code, out = _run(config, capsys, "tokens", "bot")
        assert "LAST_USED_AT" in out and out.splitlines()[1].split()[-2:] == ["-", "-"]
        use_token(store, token)  # a request with it
        code, out = _run(config, capsys, "tokens", "bot", "--json")
        assert json.loads(out)[0]["last_used_at"] is not None
        assert _run(config, capsys, "token", "revoke", "1", "--reason", "leaked", *ADA)[0] == 0
        with store.read() as conn:
            assert token_holder(conn, token) is None
        assert _run(config, capsys, "disable", "bot", "--reason", "retired", *ADA)[0] == 0
        with store.read() as conn:
            assert conn.scalar(select(users.c.disabled).where(users.c.name == "bot")) is True
            stored = conn.scalar(select(users.c.password_hash).where(users.c.name == "ada"))
            events = conn.execute(
                select(
                    audit_events.c.actor,
                    audit_events.c.action,
                    audit_events.c.target,
                    audit_events.c.details,
                )
            ).all()
    finally:
        store.dispose()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert [(actor, action, target) for actor, action, target, _ in events] == [
        ("root", "user-add", "user:ada"),  # any name while there are no users
        ("ada", "user-add", "user:bot"),
        ("ada", "token-issue", "user:bot"),
        ("ada", "token-revoke", "user:bot"),
        ("ada", "user-disable", "user:bot"),
    ]
    assert {json.loads(details)["os_user"] for *_, details in events} == {os_user()}
    assert [json.loads(details).get("reason") for *_, details in events[-2:]] == [
        "leaked",
        "retired",
    ]


def test_users_add_without_a_terminal_says_how_to_give_the_password(config, capsys):
    """A script or a pipe has no terminal to prompt on: one line saying what to use."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
        code = main(["--config", str(config), "users", "add", "ada", "--role", "admin"])
    assert code == 1
    assert capsys.readouterr().err == (
        "error: no terminal to ask for the password: pipe it in with --password-stdin, "
        "or add a token-only user with --no-password\n"
    )


def test_first_start_without_users_says_how_to_create_the_admin(tmp_path, store_url, caplog):
    with caplog.at_level(logging.WARNING, logger="router.api.security"):
        running = RunningEngine(engine_config(tmp_path, store_url), {}, http=True)
        running.stop()
    assert "python run.py users add admin --role admin" in caplog.text


def test_a_store_with_names_differing_only_in_case_starts_and_says_so(tmp_path, store_url, caplog):
    """Such names were possible before names were compared without case: the engine starts
    (they still sign in apart) and warns that four eyes counts them as one person."""
    from router.auth.roles import encode
    from router.store.inbound import utcnow
    from router.store.migrate import upgrade

    store = Store(store_url)
    upgrade(store)
    now = utcnow()
    with store.begin() as conn:
        for name in ("Ada", "ada"):
            row = {"name": name, "roles": encode(frozenset({"approver"})), "disabled": False}
            conn.execute(
                users.insert().values(**row, created_at=now, created_by="old", updated_at=now)
            )
    store.dispose()
    with caplog.at_level(logging.WARNING, logger="router.api.security"):
        running = RunningEngine(engine_config(tmp_path, store_url), {}, http=True)
        running.stop()
    assert "users Ada and ada differ only in case" in caplog.text


def test_roles_change_on_the_command_line_with_a_reason_and_the_last_admin_kept(
    config, store_url, capsys
):
    add = ("add", "ada", "--role", "admin", "--password-stdin", "--actor", "root")
    assert _run(config, capsys, *add, stdin=PASSWORD + "\n")[0] == 0
    assert _run(config, capsys, "add", "bot", "--role", "viewer", "--no-password", *ADA)[0] == 0
    assert _run(config, capsys, "token", "bot", "--role", "viewer", *ADA)[0] == 0

    change = ("roles", "bot", "--add", "approver", "--remove", "viewer", "--reason", "rota")
    code, out = _run(config, capsys, *change, *ADA)
    assert (code, out) == (0, "bot: approver\n"), "the token keeps viewer: any user has it"
    code, out = _run(config, capsys, *change, *ADA)
    assert (code, out) == (0, "bot already holds approver: nothing changed\n")
    no_reason = ("roles", "bot", "--add", "engineer")
    with pytest.raises(SystemExit):
        _run(config, capsys, *no_reason, *ADA)
    demote = ("roles", "ada", "--remove", "admin", "--add", "viewer", "--reason", "x")
    assert _refusal(config, capsys, *demote, *ADA) == (
        "error: 'ada' is the only enabled admin: make another user an admin first\n"
    )
    assert "only enabled admin" in _refusal(config, capsys, "disable", "ada", *ADA)
    wrong_case = ("roles", "Bot", "--add", "admin", "--reason", "x", *ADA)
    assert _refusal(config, capsys, *wrong_case) == "error: no user 'Bot' (did you mean 'bot'?)\n"

    store = Store(store_url)
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(audit_events.c.actor, audit_events.c.details).where(
                    audit_events.c.action == "user-roles"
                )
            ).all()
            assert conn.scalar(select(users.c.roles).where(users.c.name == "ada")) == "admin"
    finally:
        store.dispose()
    assert len(rows) == 1 and rows[0].actor == "ada"
    details = json.loads(rows[0].details)
    assert (details["added"], details["removed"], details["reason"]) == (
        ["approver"],
        ["viewer"],
        "rota",
    )


def test_enable_on_the_command_line_needs_a_reason(config, store_url, capsys):
    add = ("add", "ada", "--role", "admin", "--password-stdin", "--actor", "root")
    assert _run(config, capsys, *add, stdin=PASSWORD + "\n")[0] == 0
    assert _run(config, capsys, "add", "bot", "--role", "viewer", "--no-password", *ADA)[0] == 0
    assert _run(config, capsys, "disable", "bot", *ADA)[0] == 0
    with pytest.raises(SystemExit):
        _run(config, capsys, "enable", "bot", *ADA)
    code, out = _run(config, capsys, "enable", "bot", "--reason", "was paused", *ADA)
    assert (code, out) == (0, "enabled bot (viewer); issue new tokens if needed\n")
    assert _refusal(config, capsys, "enable", "bot", "--reason", "x", *ADA) == (
        "error: user 'bot' is not disabled\n"
    )


def test_an_admin_resets_a_password_on_the_command_line(config, store_url, capsys):
    add = ("add", "ada", "--role", "admin", "--password-stdin", "--actor", "root")
    assert _run(config, capsys, *add, stdin=PASSWORD + "\n")[0] == 0
    sam = ("add", "sam", "--role", "support", "--password-stdin", *ADA)
    assert _run(config, capsys, *sam, stdin=PASSWORD + "\n")[0] == 0
    reset = ("password", "sam", "--password-stdin", "--reason", "forgot", *ADA)
    code, out = _run(config, capsys, *reset, stdin="another long password\n")
    assert (code, out) == (0, "password set for sam; their sessions are ended\n")
    assert "at least 12" in _refusal(config, capsys, "password", "sam", "--password-stdin", *ADA)
    assert _refusal(config, capsys, "password", "sam", *ADA) == (
        "error: no terminal to ask for the password: pipe it in with --password-stdin\n"
    )
    store = Store(store_url)
    try:
        with store.read() as conn:
            assert check_password(conn, "sam", "another long password")[1] == "ok"
            details = conn.scalar(
                select(audit_events.c.details).where(audit_events.c.action == "user-password")
            )
    finally:
        store.dispose()
    assert json.loads(details)["reason"] == "forgot"


def test_a_sending_systems_token_is_rotated_on_the_command_line(config, store_url, capsys):
    add = ("add", "ada", "--role", "admin", "--password-stdin", "--actor", "root")
    assert _run(config, capsys, *add, stdin=PASSWORD + "\n")[0] == 0
    assert _run(config, capsys, "add", "gp", "--role", "sender", "--no-password", *ADA)[0] == 0
    issue = ("token", "gp", "--role", "sender", "--expires", "90d", "--label", "PAS live", *ADA)
    code, out = _run(config, capsys, *issue)
    old = out.splitlines()[-1]
    assert "keeps its label" in _refusal(
        config, capsys, "token", "rotate", "1", "--label", "other", *ADA
    )
    rotate = ("token", "rotate", "1", "--overlap", "2h", "--reason", "yearly", *ADA)
    code, out = _run(config, capsys, *rotate)
    assert code == 0 and out.startswith("token 2 for gp; token 1 works until ")
    new = out.splitlines()[-1]
    store = Store(store_url)
    try:
        with store.read() as conn:
            assert token_holder(conn, old) == token_holder(conn, new) == ("gp", {"sender"})
            rotated = conn.scalar(
                select(audit_events.c.details).where(audit_events.c.action == "token-rotate")
            )
        assert json.loads(rotated)["reason"] == "yearly"
    finally:
        store.dispose()
    assert "leave out --role" in _refusal(
        config, capsys, "token", "rotate", "2", "--role", "viewer", *ADA
    )
    relabel = ("token", "label", "2", "--label", "PAS 2027", "--reason", "renamed", *ADA)
    assert _run(config, capsys, *relabel)[1].strip() == "token 2 is labelled 'PAS 2027'"
    assert "new label" in _refusal(config, capsys, "token", "label", "2", *ADA)
    code, out = _run(config, capsys, "tokens", "--expiring", "1d", "--json")
    assert [t["id"] for t in json.loads(out)] == [1], "the old one, within its overlap"
    code, out = _run(config, capsys, "tokens", "--expiring", "100d", "--json")
    assert [(t["id"], t["state"], t["label"]) for t in json.loads(out)] == [
        (1, "live", "PAS live"),
        (2, "live", "PAS 2027"),
    ], "the new token had the old one's label, then was given its own"
    header, first, _ = _run(config, capsys, "tokens", "gp")[1].splitlines()
    assert header.split()[:3] == ["ID", "USER", "LABEL"] and first.split()[:4] == [
        "1",
        "gp",
        "PAS",
        "live",
    ]
    assert "printable" in _refusal(
        config, capsys, "token", "gp", "--role", "sender", "--label", "PAS\x1b[2J", *ADA
    )


def test_adding_a_user_and_issuing_a_token_keep_their_reasons(config, store_url, capsys):
    add = ("add", "ada", "--role", "admin", "--password-stdin", "--actor", "root")
    assert _run(config, capsys, *add, "--reason", "first admin", stdin=PASSWORD + "\n")[0] == 0
    gp = ("add", "gp", "--role", "sender", "--no-password", "--reason", "PAS feed", *ADA)
    assert _run(config, capsys, *gp)[0] == 0
    assert (
        _run(config, capsys, "token", "gp", "--role", "sender", "--reason", "go-live", *ADA)[0] == 0
    )
    assert _run(config, capsys, "add", "sam", "--role", "viewer", "--no-password", *ADA)[0] == 0
    store = Store(store_url)
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(audit_events.c.action, audit_events.c.details).order_by(audit_events.c.id)
            ).all()
    finally:
        store.dispose()
    reasons = [(action, json.loads(details).get("reason")) for action, details in rows]
    assert reasons == [
        ("user-add", "first admin"),
        ("user-add", "PAS feed"),
        ("token-issue", "go-live"),
        ("user-add", None),
    ]
