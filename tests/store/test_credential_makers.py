"""Who made each credential is kept: a token's issuer (a rotation's too), who last set a
user's password, and on a session the setter of the password it signed in with."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from router.auth.accounts import set_password
from router.auth.sessions import load_session, start_session
from router.auth.tokens import issue_token, rotate_token, token_bearer
from router.auth.users import add_user, check_password
from router.store.schema import users

PASSWORD = "a long enough password"


def _setter(store, name: str) -> str | None:
    with store.read() as conn:
        return conn.scalar(select(users.c.password_set_by).where(users.c.name == name))


def test_the_password_setter_is_the_adder_then_whoever_set_it_last(store):
    with store.begin() as conn:
        add_user(conn, "bob", ["approver"], PASSWORD, actor="admin")
        add_user(conn, "bot", ["viewer"], None, actor="admin")
    assert _setter(store, "bob") == "admin"
    assert _setter(store, "bot") is None  # no password: nobody set one
    with store.begin() as conn:
        set_password(conn, "bob", PASSWORD + "!", actor="bob")
    assert _setter(store, "bob") == "bob"
    with store.begin() as conn:
        set_password(conn, "bob", PASSWORD, actor="carol", reason="locked out")
    assert _setter(store, "bob") == "carol"


def test_a_session_keeps_the_setter_of_the_password_it_signed_in_with(store):
    with store.begin() as conn:
        add_user(conn, "bob", ["approver"], PASSWORD, actor="admin")
        user, why = check_password(conn, "bob", PASSWORD)
        assert why == "ok" and user is not None and user.password_set_by == "admin"
        cookie, _ = start_session(
            conn, user.id, lifetime=3600, password_set_by=user.password_set_by
        )
        set_password(conn, "bob", PASSWORD + "!", actor="bob", keep_session=cookie)
    session = load_session(store, cookie, idle=3600)
    assert session is not None and session.password_set_by == "admin"


def test_a_token_names_its_issuer_and_a_rotation_its_rotator(store):
    with store.begin() as conn:
        add_user(conn, "bob", ["approver"], None, actor="admin")
        token_id, token = issue_token(conn, "bob", ["approver"], actor="admin")
        bearer = token_bearer(conn, token)
        assert bearer is not None and (bearer.name, bearer.issued_by) == ("bob", "admin")
        rotated = rotate_token(conn, token_id, actor="carol", overlap=timedelta(hours=1))
        bearer = token_bearer(conn, rotated.token)
        assert bearer is not None and bearer.issued_by == "carol"
