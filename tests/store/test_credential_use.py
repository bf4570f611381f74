"""When an API token was last used and a user last signed in, on SQLite and PostgreSQL.

A token's use is written at most once a minute, so the request path does not write on
every request; a sign-in is read from the audit log's ``login`` events."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import delete, event, select
from sqlalchemy.exc import OperationalError

from router.auth import token_use
from router.auth.sessions import start_session
from router.auth.token_use import NOTE_EVERY, note_use, use_token
from router.auth.tokens import issue_token, list_tokens
from router.auth.users import add_user, list_users
from router.repeat_log import RepeatLog
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import api_tokens, audit_events, sessions


def _issue(store: Store, name: str = "gp") -> tuple[int, str]:
    with store.begin() as conn:
        add_user(conn, name, ["sender"], None, actor="test")
        return issue_token(conn, name, ["sender"], actor="test")


def _last_used(store: Store, token_id: int):
    with store.read() as conn:
        return conn.scalar(select(api_tokens.c.last_used_at).where(api_tokens.c.id == token_id))


def _updates_of_tokens(store: Store) -> list[str]:
    """Every UPDATE of api_tokens the store's writer runs from now on."""
    seen: list[str] = []

    @event.listens_for(store.writer, "before_cursor_execute")
    def _seen(_conn, _cursor, statement, *_args) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_TOKENS"):
            seen.append(statement)

    return seen


def test_a_token_is_noted_as_used_once_a_minute_not_on_every_request(store: Store):
    token_id, token = _issue(store)
    assert _last_used(store, token_id) is None, "a new token has not been used"
    writes = _updates_of_tokens(store)
    before = utcnow()
    for _ in range(20):
        assert use_token(store, token).name == "gp"
    first = _last_used(store, token_id)
    assert first is not None and first >= before
    assert len(writes) == 1, "twenty requests within the minute: one write"

    with store.begin() as conn:  # the minute has passed
        earlier = first - NOTE_EVERY
        conn.execute(
            api_tokens.update().where(api_tokens.c.id == token_id).values(last_used_at=earlier)
        )
    use_token(store, token)
    assert _last_used(store, token_id) > earlier
    assert len(writes) == 3, "the rewind above and one more note"
    with store.read() as conn:
        (listed,) = list_tokens(conn, "gp")
    assert listed["last_used_at"] == _last_used(store, token_id), "shown with the tokens"


def test_two_nodes_noting_the_same_minute_write_it_once(store: Store):
    token_id, _ = _issue(store)
    now = utcnow()
    with store.begin() as conn:
        assert note_use(conn, token_id, now) is True
    with store.begin() as conn:
        assert note_use(conn, token_id, now + NOTE_EVERY / 2) is False, "within the minute"
    assert _last_used(store, token_id) == now
    with store.begin() as conn:
        assert note_use(conn, token_id, now + NOTE_EVERY) is True


def test_a_token_that_is_not_live_is_not_noted(store: Store):
    token_id, token = _issue(store)
    with store.begin() as conn:
        conn.execute(api_tokens.update().values(revoked_at=utcnow(), revoked_by="test"))
    assert use_token(store, token) is None
    assert _last_used(store, token_id) is None


LOCKED = [
    OperationalError("UPDATE api_tokens", {}, Exception("database is locked")),
    sqlite3.OperationalError("database is locked"),  # SQLite's BEGIN, run by the driver
]


@pytest.mark.parametrize("error", LOCKED, ids=["sqlalchemy", "driver"])
def test_a_store_refusing_the_note_does_not_refuse_the_request(
    store: Store,
    error: Exception,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    """The note is best-effort: a busy writer leaves it a minute stale, nothing more."""
    token_id, token = _issue(store)

    def busy(*_args, **_kwargs):
        raise error

    monkeypatch.setattr("router.auth.token_use.note_use", busy)
    monkeypatch.setattr("router.auth.token_use._unnoted", RepeatLog(token_use.log))
    assert use_token(store, token).name == "gp"
    assert _last_used(store, token_id) is None
    assert "could not note the use of token" in caplog.text


def test_the_last_sign_in_is_kept_on_the_user_and_outlives_the_audit_log(store: Store):
    with store.begin() as conn:
        ids = {n: add_user(conn, n, ["viewer"], None, actor="test").id for n in ("ada", "sam")}
    with store.begin() as conn:
        start_session(conn, ids["sam"], lifetime=3600, password_set_by=None)
    with store.begin() as conn:
        start_session(conn, ids["sam"], lifetime=3600, password_set_by=None)
        latest = conn.scalar(select(sessions.c.created_at).order_by(sessions.c.id.desc()))
        conn.execute(delete(audit_events))  # the audit log pruned (or archived) meanwhile
    with store.read() as conn:
        seen = {u["name"]: u["last_sign_in_at"] for u in list_users(conn)}
    assert seen == {"ada": None, "sam": latest}
