"""The console's users page and the users API, in-process (the real routes on one store,
no engine): admin only, a reason for every change, the CLI's and API's guards and audit
rows, and tokens shown with their issuer and when they were last used."""

from __future__ import annotations

import asyncio
import html
import json
import re
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from router.api.security import SESSION_COOKIE, install
from router.api.users import user_routes as api_user_routes
from router.auth.passwords import verify_password
from router.auth.sessions import start_session
from router.auth.tokens import issue_token
from router.auth.users import add_user
from router.config.engine import AuthOptions
from router.console.errors import install as install_error_pages
from router.console.users import user_routes
from router.store.database import Store
from router.store.schema import api_tokens, audit_events, sessions, users

a = audit_events.c


class Client:
    """The app in-process (httpx's ASGI transport), for a session cookie or none."""

    def __init__(self, app: FastAPI, cookie: str = "") -> None:
        self.app = app
        self.cookies = {SESSION_COOKIE: cookie} if cookie else {}

    def request(self, method: str, path: str, **options: object) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(self.app)
            base = "http://127.0.0.1"
            async with httpx.AsyncClient(
                transport=transport, base_url=base, cookies=self.cookies
            ) as client:
                return await client.request(method, path, **options)

        return asyncio.run(send())

    def get(self, path: str, **options: object) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: object) -> httpx.Response:
        return self.request("POST", path, **options)


@pytest.fixture
def store_url(tmp_path) -> str:
    """SQLite only: the page's queries run on PostgreSQL in tests/store/test_credential_use.py."""
    return f"sqlite:///{tmp_path / 'tie.db'}"


@pytest.fixture
def app(store: Store) -> FastAPI:
    engine = SimpleNamespace(store=store)
    app = FastAPI()
    install(app, store, AuthOptions())
    app.include_router(api_user_routes(engine))
    app.include_router(user_routes(engine))
    install_error_pages(app)
    with store.begin() as conn:
        for name, roles in {"ada": ["admin"], "sam": ["support"], "gp": ["sender"]}.items():
            add_user(conn, name, roles, None, actor="test")  # sessions are made, not signed in
    return app


def _signed_in(app: FastAPI, store: Store, name: str) -> Client:
    with store.begin() as conn:
        user_id = conn.scalar(select(users.c.id).where(users.c.name == name))
        cookie, _ = start_session(conn, user_id, lifetime=3600, password_set_by="test")
    return Client(app, cookie)


@pytest.fixture
def ada(app: FastAPI, store: Store) -> Client:
    return _signed_in(app, store, "ada")


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def _nonce(page: str) -> str:
    found = re.search(r'name="form_nonce" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def _post(client: Client, path: str, **form: object) -> object:
    """The form sent from a page just loaded: the session's CSRF token, a fresh nonce."""
    page = client.get("/users").text
    return client.post(path, data={"csrf_token": _csrf(page), "form_nonce": _nonce(page), **form})


def _events(store: Store, action: str) -> list[tuple[str, str, dict]]:
    with store.read() as conn:
        rows = conn.execute(
            select(a.actor, a.target, a.details).where(a.action == action).order_by(a.id)
        )
        return [(r.actor, r.target, json.loads(r.details)) for r in rows]


def test_only_an_admin_sees_the_page_and_its_link(app, store, ada):
    page = ada.get("/users")
    assert page.status_code == 200
    assert '<a href="/users" aria-current="page">Users</a>' in page.text
    for user in ("ada", "sam", "gp"):
        assert f'data-user="{user}"' in page.text
    sam = _signed_in(app, store, "sam")
    refused = sam.get("/users")
    assert refused.status_code == 403
    assert 'href="/users"' not in refused.text, "no link for those who may not follow it"
    csrf = _csrf(refused.text)  # the logout form's: a valid token, still the wrong role
    gone = sam.post("/users/ada/disable", data={"csrf_token": csrf, "reason": "mutiny"})
    assert gone.status_code == 403
    assert _events(store, "user-disable") == []
    assert Client(app).get("/users").status_code == 303, "anonymous: to the sign-in page"


def test_a_change_without_the_sessions_csrf_token_is_refused(ada, store):
    refused = ada.post("/users/sam/disable", data={"reason": "left"})
    assert refused.status_code == 403
    assert _events(store, "user-disable") == []


def test_roles_change_with_a_reason_and_revoke_tokens_left_with_none(ada, store):
    with store.begin() as conn:
        token_id, _ = issue_token(conn, "sam", ["support"], actor="ada")
    no_reason = _post(ada, "/users/sam/roles", role=["viewer"], held=["support"], reason=" ")
    assert no_reason.status_code == 422 and "give a reason" in no_reason.text
    wizard = _post(ada, "/users/sam/roles", role=["wizard"], held=["support"], reason="x")
    assert wizard.status_code == 422 and "unknown role" in wizard.text
    done = _post(
        ada, "/users/sam/roles", role=["viewer", "approver"], held=["support"], reason="rota"
    )
    assert done.status_code == 303
    notice = ada.get(done.headers["location"]).text
    assert "Changed the roles of sam" in notice
    assert f"Revoked token(s) {token_id}" in notice
    (event,) = _events(store, "user-roles")
    assert event[:2] == ("ada", "user:sam")
    assert event[2]["added"] == ["approver", "viewer"] and event[2]["removed"] == ["support"]
    assert (event[2]["reason"], event[2]["tokens_revoked"]) == ("rota", [token_id])


def test_the_last_enabled_admin_is_kept(ada, store):
    demoted = _post(ada, "/users/ada/roles", role=["viewer"], held=["admin"], reason="oops")
    assert demoted.status_code == 422
    assert "the only enabled admin" in demoted.text
    disabled = _post(ada, "/users/ada/disable", reason="oops")
    assert disabled.status_code == 422
    assert _events(store, "user-roles") == _events(store, "user-disable") == []


def test_disable_and_enable_with_a_reason(ada, store):
    with store.begin() as conn:
        token_id, _ = issue_token(conn, "sam", ["support"], actor="ada")
    done = _post(ada, "/users/sam/disable", reason="left the trust")
    assert done.status_code == 303
    assert "Disabled sam" in ada.get(done.headers["location"]).text
    assert _events(store, "user-disable") == [
        ("ada", "user:sam", {"tokens_revoked": [token_id], "reason": "left the trust"})
    ]
    again = _post(ada, "/users/sam/enable", reason="back")
    assert again.status_code == 303
    assert _events(store, "user-enable")[0][2]["reason"] == "back"
    assert _post(ada, "/users/nobody/enable", reason="x").status_code == 404


def test_a_password_reset_records_the_admin_as_its_maker_and_ends_sessions(app, ada, store):
    _signed_in(app, store, "sam")  # a session of sam's, to be ended
    new = "a brand new passphrase"
    differ = _post(ada, "/users/sam/password", new_password=new, again=new + "!", reason="lost")
    assert differ.status_code == 422 and "differ" in differ.text
    short = _post(ada, "/users/sam/password", new_password="short", again="short", reason="lost")
    assert short.status_code == 422 and "at least 12" in short.text
    done = _post(ada, "/users/sam/password", new_password=new, again=new, reason="lost it")
    assert done.status_code == 303
    with store.read() as conn:
        row = conn.execute(select(users).where(users.c.name == "sam")).one()
        left = conn.scalars(select(sessions.c.id).where(sessions.c.user_id == row.id)).all()
    assert verify_password(row.password_hash, new) and row.password_set_by == "ada"
    assert left == []
    (event,) = _events(store, "user-password")
    assert event == ("ada", "user:sam", {"sessions_ended": 1, "reason": "lost it"})
    assert new not in json.dumps(_events(store, "user-password"))


def test_tokens_are_listed_with_issuer_and_last_use_and_revoked_with_a_reason(app, ada, store):
    with store.begin() as conn:
        token_id, token = issue_token(conn, "gp", ["sender"], actor="ada")
    page = ada.get("/users").text
    row = re.search(rf'<tr data-token="{token_id}">.*?</tr>', page, re.S).group(0)
    assert "gp" in row and "sender" in row and "ada" in row and "not recorded" in row
    listed = ada.get("/api/users/gp/tokens").json()["tokens"]
    assert listed[0]["created_by"] == "ada" and listed[0]["last_used_at"] is None

    used = Client(app).get("/api/users", headers={"Authorization": f"Bearer {token}"})
    assert used.status_code == 403, "a sender's token, used (and refused: not an admin)"
    with store.read() as conn:
        last = conn.scalar(select(api_tokens.c.last_used_at).where(api_tokens.c.id == token_id))
    assert last is not None
    assert ada.get("/api/users/gp/tokens").json()["tokens"][0]["last_used_at"] is not None
    assert "not recorded" not in re.search(
        rf'<tr data-token="{token_id}">.*?</tr>', ada.get("/users").text, re.S
    ).group(0)

    done = _post(ada, f"/users/tokens/{token_id}/revoke", reason="rotated")
    assert done.status_code == 303
    assert f"Revoked token {token_id}." in ada.get(done.headers["location"]).text
    assert _events(store, "token-revoke") == [
        ("ada", "user:gp", {"token": token_id, "reason": "rotated"})
    ]
    assert _post(ada, "/users/tokens/999/revoke", reason="x").status_code == 404


def test_the_api_keeps_a_reason_for_disabling_when_given(app, store):
    with store.begin() as conn:
        _, token = issue_token(conn, "ada", ["admin"], actor="test")
    api = {"headers": {"Authorization": f"Bearer {token}"}}
    assert Client(app).post("/api/users/sam/disable", json={"reason": "left"}, **api).is_success
    assert Client(app).post("/api/users/gp/disable", **api).is_success, "a body is optional"
    details = [event[2] for event in _events(store, "user-disable")]
    assert [d.get("reason") for d in details] == ["left", None]


def _dialog(page: str, dialog_id: str) -> str:
    found = re.search(rf'<dialog id="{dialog_id}".*?</dialog>', page, re.S)
    assert found, page
    return found.group(0)


def test_an_admin_adds_a_user_with_a_password_as_its_maker(app, ada, store):
    new = "an initial passphrase"
    done = _post(
        ada,
        "/users/add",
        name="kim",
        role=["support", "viewer"],
        new_password=new,
        again=new,
        reason="new starter",
    )
    assert done.status_code == 303
    assert "Added kim." in ada.get(done.headers["location"]).text
    with store.read() as conn:
        row = conn.execute(select(users).where(users.c.name == "kim")).one()
    assert verify_password(row.password_hash, new)
    assert (row.password_set_by, row.created_by) == ("ada", "ada")
    assert _events(store, "user-add")[-1] == (
        "ada",
        "user:kim",
        {"roles": ["support", "viewer"], "password": True, "reason": "new starter"},
    )
    tokens_only = _post(
        ada, "/users/add", name="pas", role=["sender"], tokens_only="true", reason="PAS feed"
    )
    assert tokens_only.status_code == 303
    with store.read() as conn:
        row = conn.execute(select(users).where(users.c.name == "pas")).one()
    assert row.password_hash is None and row.password_set_by is None


@pytest.mark.parametrize(
    ("form", "says", "status"),
    [
        ({"new_password": "long enough 1", "again": "long enough 2"}, "differ", 422),
        ({"new_password": "short", "again": "short"}, "at least 12", 422),
        ({"name": "Ada"}, "exists as &#39;ada&#39;", 422),
        ({"name": "no spaces"}, "a user name is", 422),
        ({"role": ["wizard"]}, "unknown role", 422),
        ({"role": []}, "at least one role", 422),
        ({"tokens_only": "true"}, "has no password", 422),
        ({"reason": " "}, "give a reason", 422),
    ],
)
def test_a_refused_user_is_shown_again_with_what_was_typed_but_passwords(
    ada, store, form, says, status
):
    typed = {
        "name": "kim",
        "role": ["approver"],
        "new_password": "the right passphrase",
        "again": "the right passphrase",
        "reason": "new starter",
        **form,
    }
    refused = _post(ada, "/users/add", **typed)
    assert refused.status_code == status and says in refused.text
    dialog = _dialog(refused.text, "add-user")
    assert "data-reopen" in dialog and says in dialog, "said where the reader is: the dialog"
    assert f'value="{typed["name"]}"' in dialog
    for role in typed["role"]:
        if role != "wizard":
            assert f'value="{role}" checked' in dialog
    if typed["reason"].strip():
        assert f">{typed['reason']}</textarea>" in dialog
    assert typed["new_password"] not in refused.text and typed["again"] not in refused.text
    assert _events(store, "user-add")[3:] == [], "only the fixture's three users"


def test_an_issued_token_is_shown_once_uncached_and_nowhere_else(ada, store, caplog):
    caplog.set_level("DEBUG")
    issued = _post(ada, "/users/gp/tokens", role=["sender"], expires="90d", reason="PAS go-live")
    assert issued.status_code == 200, "the answer itself: no redirect to carry it"
    assert issued.headers["cache-control"] == "no-store"
    assert 'data-shown-once="/users"' in issued.text
    token = re.search(r'value="(tie_[^"]+)"', issued.text).group(1)
    with store.read() as conn:
        row = conn.execute(select(api_tokens)).one()
        audit_rows = [json.dumps(list(r), default=str) for r in conn.execute(select(audit_events))]
    assert f"Token {row.id} for gp" in issued.text
    assert row.created_by == "ada" and row.expires_at is not None
    (event,) = _events(store, "token-issue")
    assert event[:2] == ("ada", "user:gp")
    assert (event[2]["roles"], event[2]["reason"]) == (["sender"], "PAS go-live")
    assert not any(token in text for text in audit_rows)
    assert not any(token in record.getMessage() for record in caplog.records)
    assert token not in ada.get("/users").text, "the listing never shows it again"

    api = Client(ada.app).get("/api/users", headers={"Authorization": f"Bearer {token}"})
    assert api.status_code == 403, "a live sender's token (refused: not an admin)"


def test_a_token_form_sent_twice_issues_one_token_and_says_so(ada, store):
    page = ada.get("/users").text
    with store.read() as conn:
        gp_id = conn.scalar(select(users.c.id).where(users.c.name == "gp"))
    form = {
        "csrf_token": _csrf(page),
        "form_nonce": _nonce(_dialog(page, f"token-{gp_id}")),
        "role": ["sender"],
        "reason": "PAS go-live",
    }
    first = ada.post("/users/gp/tokens", data=form)
    again = ada.post("/users/gp/tokens", data=form)
    assert first.status_code == 200 and "tie_" in first.text
    assert again.status_code == 409 and "tie_" not in again.text
    assert "Already sent" in again.text and "Nothing was done again" in again.text
    with store.read() as conn:
        (token_id,) = conn.scalars(select(api_tokens.c.id)).all()
    assert len(_events(store, "token-issue")) == 1
    link = re.search(r'<a href="([^"]+)">See what the first', again.text).group(1)
    seen = ada.get(html.unescape(link))
    assert f"Issued token {token_id} for gp" in seen.text and "tie_" not in seen.text


def test_a_form_without_its_nonce_or_with_another_sessions_is_refused(app, ada, store):
    page = ada.get("/users").text
    bare = ada.post("/users/sam/disable", data={"csrf_token": _csrf(page), "reason": "left"})
    assert bare.status_code == 403 and "one-time token" in bare.text
    other = _signed_in(app, store, "ada")
    theirs = _nonce(other.get("/users").text)
    form = {"csrf_token": _csrf(page), "form_nonce": theirs, "reason": "left"}
    assert ada.post("/users/sam/disable", data=form).status_code == 403
    assert _events(store, "user-disable") == []


def test_a_refused_form_can_be_corrected_and_sent_again(ada, store):
    page = ada.get("/users").text
    form = {"csrf_token": _csrf(page), "form_nonce": _nonce(page), "reason": " "}
    assert ada.post("/users/sam/disable", data=form).status_code == 422
    done = ada.post("/users/sam/disable", data=form | {"reason": "left"})
    assert done.status_code == 303
    assert [e[1] for e in _events(store, "user-disable")] == ["user:sam"]


@pytest.mark.parametrize(
    ("form", "says", "status"),
    [
        ({"role": ["admin"]}, "does not hold the role", 422),
        ({"role": []}, "at least one role", 422),
        ({"expires": "soon"}, "not a duration", 422),
        ({"expires": "0s"}, "longer than nothing", 422),
        ({"expires": "4000d"}, "at most 3650d", 422),
        ({"reason": ""}, "give a reason", 422),
    ],
)
def test_a_refused_token_is_shown_again_with_what_was_typed(ada, store, form, says, status):
    typed = {"role": ["support"], "expires": "30d", "reason": "rota script", **form}
    refused = _post(ada, "/users/sam/tokens", **typed)
    assert refused.status_code == status and says in refused.text
    with store.read() as conn:
        sam_id = conn.scalar(select(users.c.id).where(users.c.name == "sam"))
        assert conn.execute(select(api_tokens)).all() == []
    dialog = _dialog(refused.text, f"token-{sam_id}")
    assert "data-reopen" in dialog and says in dialog
    assert f'value="{typed["expires"]}"' in dialog
    if "support" in typed["role"]:
        assert 'value="support" checked' in dialog
    assert _events(store, "token-issue") == []


def test_a_token_for_nobody_or_a_disabled_user_is_refused(ada, store):
    assert _post(ada, "/users/nobody/tokens", role=["viewer"], reason="x").status_code == 404
    _post(ada, "/users/sam/disable", reason="left")
    refused = _post(ada, "/users/sam/tokens", role=["support"], reason="x")
    assert refused.status_code == 422 and "is disabled" in refused.text


def test_only_an_admin_adds_users_and_issues_tokens(app, store):
    sam = _signed_in(app, store, "sam")
    csrf = _csrf(sam.get("/users").text)
    added = sam.post(
        "/users/add",
        data={"csrf_token": csrf, "name": "eve", "role": ["admin"], "tokens_only": "true"}
        | {"reason": "x"},
    )
    issued = sam.post(
        "/users/sam/tokens", data={"csrf_token": csrf, "role": ["support"], "reason": "x"}
    )
    assert added.status_code == issued.status_code == 403
    assert "tie_" not in issued.text
    assert _events(store, "user-add")[3:] == _events(store, "token-issue") == []


def test_the_api_keeps_a_reason_for_adding_a_user_and_issuing_a_token(app, store):
    with store.begin() as conn:
        _, token = issue_token(conn, "ada", ["admin"], actor="test")
    api = Client(app)
    auth = {"headers": {"Authorization": f"Bearer {token}"}}
    body = {"name": "pas", "roles": ["sender"], "reason": "PAS feed"}
    assert api.post("/api/users", json=body, **auth).status_code == 201
    issued = api.post(
        "/api/users/pas/tokens", json={"roles": ["sender"], "reason": "go-live"}, **auth
    )
    assert issued.status_code == 201
    assert _events(store, "user-add")[-1][2]["reason"] == "PAS feed"
    assert _events(store, "token-issue")[-1][2]["reason"] == "go-live"


def test_an_admin_rotates_a_token_with_a_reason_and_sees_the_new_one_once(ada, store):
    with store.begin() as conn:
        old_id, _ = issue_token(conn, "gp", ["sender"], actor="test", label="PAS live")
    assert f'aria-label="Rotate… token {old_id} of gp"' in ada.get("/users").text
    path = f"/users/tokens/{old_id}/rotate"
    refused = _post(ada, path, overlap="1h", expires="4000d", reason="yearly")
    assert refused.status_code == 422 and "at most 3650d" in refused.text
    dialog = _dialog(refused.text, f"rotate-{old_id}")
    assert "data-reopen" in dialog and 'value="4000d"' in dialog and ">yearly</textarea>" in dialog
    assert _post(ada, path, overlap="1h", reason=" ").status_code == 422
    done = _post(ada, path, overlap="1h", reason="yearly")
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    assert 'data-shown-once="/users"' in done.text
    token = re.search(r'value="(tie_[^"]+)"', done.text).group(1)
    t = api_tokens.c
    with store.read() as conn:
        old, new = conn.execute(select(t.id, t.label, t.expires_at).order_by(t.id)).all()
    assert new.label == "PAS live" and old.expires_at is not None
    assert f"Rotated token {old_id} into token {new.id} for gp" in done.text
    ((actor, target, details),) = _events(store, "token-rotate")
    assert (actor, target, details["reason"], details["new_token"]) == (
        "ada",
        "user:gp",
        "yearly",
        new.id,
    )
    assert token not in json.dumps(_events(store, "token-issue"))
    assert token not in ada.get("/users").text


def test_the_api_keeps_a_reason_for_rotating_a_token(app, store):
    with store.begin() as conn:
        _, token = issue_token(conn, "ada", ["admin"], actor="test")
        old_id, _ = issue_token(conn, "gp", ["sender"], actor="test")
    auth = {"Authorization": f"Bearer {token}"}
    body = {"overlap": "1h", "reason": "yearly"}
    rotated = Client(app).post(f"/api/users/tokens/{old_id}/rotate", json=body, headers=auth)
    assert rotated.status_code == 201, rotated.text
    assert _events(store, "token-rotate")[0][2]["reason"] == "yearly"


def test_the_api_keeps_a_reason_for_revoking_a_token_when_given(app, store):
    with store.begin() as conn:
        _, token = issue_token(conn, "ada", ["admin"], actor="test")
        first, _ = issue_token(conn, "gp", ["sender"], actor="test")
        second, _ = issue_token(conn, "gp", ["sender"], actor="test")
    auth = {"Authorization": f"Bearer {token}"}
    api = Client(app)
    body = {"reason": "leaked in a ticket"}
    answer = api.request("DELETE", f"/api/users/tokens/{first}", json=body, headers=auth)
    assert answer.status_code == 204, answer.text
    assert api.request("DELETE", f"/api/users/tokens/{second}", headers=auth).status_code == 204
    long = {"reason": "x" * 1001}
    assert (
        api.request("DELETE", f"/api/users/tokens/{first}", json=long, headers=auth).status_code
        == 422
    )
    details = [event[2] for event in _events(store, "token-revoke")]
    assert details == [{"token": first, "reason": "leaked in a ticket"}, {"token": second}]


def test_a_tokens_label_is_changed_by_the_page_and_the_api_and_audited(app, ada, store):
    with store.begin() as conn:
        _, token = issue_token(conn, "ada", ["admin"], actor="test")
        gp_token, _ = issue_token(conn, "gp", ["sender"], actor="test", label="PAS test")
    assert f'aria-label="Label… token {gp_token} of gp"' in ada.get("/users").text
    path = f"/users/tokens/{gp_token}/label"
    assert _post(ada, path, label="PAS live", reason=" ").status_code == 422
    refused = _post(ada, path, label="PAS\tlive", reason="x")
    assert refused.status_code == 422 and "printable" in refused.text
    done = _post(ada, path, label=" PAS live ", reason="went live")
    assert done.status_code == 303
    assert f"Changed the label of token {gp_token}." in ada.get(done.headers["location"]).text
    auth = {"Authorization": f"Bearer {token}"}
    body = {"label": None, "reason": "no longer needed"}
    api = Client(app).request("PATCH", f"/api/users/tokens/{gp_token}", json=body, headers=auth)
    assert api.status_code == 200 and api.json() == {"id": gp_token, "label": None}
    assert (
        Client(app).request("PATCH", "/api/users/tokens/999", json=body, headers=auth).status_code
        == 404
    )
    with store.read() as conn:
        assert conn.scalar(select(api_tokens.c.label).where(api_tokens.c.id == gp_token)) is None
    assert [(e[0], e[2]) for e in _events(store, "token-label")] == [
        ("ada", {"token": gp_token, "label": "PAS live", "was": "PAS test", "reason": "went live"}),
        (
            "ada",
            {"token": gp_token, "label": None, "was": "PAS live", "reason": "no longer needed"},
        ),
    ]


def test_a_tokens_label_is_given_kept_on_rotation_and_listed(app, ada, store):
    with store.begin() as conn:
        _, token = issue_token(conn, "ada", ["admin"], actor="test")
    api = Client(app)
    auth = {"headers": {"Authorization": f"Bearer {token}"}}
    body = {"roles": ["sender"], "label": " PAS live ", "reason": "go-live"}
    issued = api.post("/api/users/gp/tokens", json=body, **auth).json()
    rotated = api.post(f"/api/users/tokens/{issued['id']}/rotate", json={}, **auth).json()
    listed = api.get("/api/users/gp/tokens", **auth).json()["tokens"]
    assert [(t["id"], t["label"]) for t in listed] == [
        (issued["id"], "PAS live"),
        (rotated["id"], "PAS live"),
    ]
    assert _events(store, "token-issue")[-2][2]["label"] == "PAS live"
    for label, status in [("x" * 65, 422), ("PAS\nlive", 422)]:
        refused = api.post("/api/users/gp/tokens", json=body | {"label": label}, **auth)
        assert refused.status_code == status, refused.text

    shown = _post(ada, "/users/gp/tokens", role=["sender"], label="PAS test", reason="testing")
    assert shown.status_code == 200 and "“PAS test”" in shown.text
    page = ada.get("/users").text
    labels = re.findall(r'<tr data-token="\d+">.*?</td><td>gp</td><td>([^<]*)</td>', page)
    assert labels == ["PAS live", "PAS live", "PAS test"]
    refused = _post(ada, "/users/gp/tokens", role=["sender"], label="PAS\ttab", reason="x")
    assert refused.status_code == 422 and "printable" in refused.text
    with store.read() as conn:
        gp_id = conn.scalar(select(users.c.id).where(users.c.name == "gp"))
    assert 'value="PAS\ttab"' in _dialog(refused.text, f"token-{gp_id}")
    with store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(api_tokens)) == 4
