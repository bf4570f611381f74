"""Changing an account over HTTP against a running engine: its roles (with the effect on
its live session and tokens), and the last enabled admin, who is always kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from console_testing import PASSWORD, Site, csrf_of, running_site, sign_in
from sqlalchemy import select
from tie_testing import api_token

from router.auth.throttle import LoginThrottle
from router.store.inbound import utcnow
from router.store.schema import api_tokens, audit_events, users

USERS = {"ada": ["admin"], "sam": ["support"], "vic": ["viewer"]}
PAUSE = "/api/channels/lab-orders/pause"
a = audit_events.c


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, USERS) as running:
        yield running


@pytest.fixture
def admin(site) -> Iterator[httpx.Client]:
    token = api_token(site.running.store, "admin", name="ada")
    with _bearer(site, token) as client:
        yield client


def _bearer(site: Site, token: str) -> httpx.Client:
    return httpx.Client(base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"})


def _events(site: Site, action: str) -> list[tuple[str, str, dict]]:
    with site.running.store.read() as conn:
        rows = conn.execute(
            select(a.actor, a.target, a.details).where(a.action == action).order_by(a.id)
        )
        return [(r.actor, r.target, json.loads(r.details)) for r in rows]


def test_a_removed_role_stops_working_on_the_next_request_of_a_session_and_a_token(site, admin):
    console = sign_in(site.url, "sam")
    csrf = csrf_of(console.get("/").text)
    support_token = api_token(site.running.store, "support", name="sam")
    pause = {"json": {"reason": "x"}, "headers": {"X-CSRF-Token": csrf}}
    assert console.post(PAUSE, **pause).status_code == 200

    change = admin.post(
        "/api/users/sam/roles",
        json={"add": ["approver"], "remove": ["support"], "reason": "moved to approvals"},
    )
    assert change.status_code == 200, change.text
    assert change.json() == {
        "name": "sam",
        "roles": ["approver"],
        "added": ["approver"],
        "removed": ["support"],
        "tokens_revoked": [2],
    }
    assert console.post(PAUSE, **pause).status_code == 403, "the same session, at once"
    assert console.get("/api/audit").status_code == 200, "the added role works"
    with _bearer(site, support_token) as script:
        assert script.get("/api/channels").status_code == 401, "a token left with no role"
    with site.running.store.read() as conn:
        revoked = conn.execute(select(api_tokens.c.revoked_by).where(api_tokens.c.id == 2))
        assert revoked.scalar() == "ada"

    restored = admin.post("/api/users/sam/roles", json={"add": ["support"], "reason": "back"})
    assert restored.json()["roles"] == ["approver", "support"]
    with _bearer(site, support_token) as script:
        assert script.get("/api/channels").status_code == 401, "granting it again revives none"

    assert _events(site, "user-roles")[0] == (
        "ada",
        "user:sam",
        {
            "added": ["approver"],
            "removed": ["support"],
            "roles": ["approver"],
            "reason": "moved to approvals",
            "tokens_revoked": [2],
        },
    )


def test_a_token_keeps_only_the_roles_its_user_still_holds(site, admin):
    admin.post("/api/users/sam/roles", json={"add": ["engineer"], "reason": "rota"})
    both = admin.post("/api/users/sam/tokens", json={"roles": ["support", "engineer"]})
    with _bearer(site, both.json()["token"]) as script:
        assert script.post(PAUSE, json={"reason": "x"}).status_code == 200
        admin.post("/api/users/sam/roles", json={"remove": ["support"], "reason": "rota"})
        assert script.post(PAUSE, json={"reason": "x"}).status_code == 403
        assert script.get("/api/channels").status_code == 200, "still an engineer's token"


def test_role_changes_are_for_admins_and_need_a_reason_and_a_known_role(site, admin):
    with _bearer(site, api_token(site.running.store, "support", name="sam")) as sam:
        refused = sam.post("/api/users/sam/roles", json={"add": ["admin"], "reason": "me"})
        assert refused.status_code == 403
    answers = {
        "no reason": admin.post("/api/users/sam/roles", json={"add": ["approver"]}),
        "blank reason": admin.post(
            "/api/users/sam/roles", json={"add": ["approver"], "reason": " "}
        ),
        "unknown role": admin.post("/api/users/sam/roles", json={"add": ["wizard"], "reason": "x"}),
        "nothing": admin.post("/api/users/sam/roles", json={"reason": "x"}),
        "no role left": admin.post(
            "/api/users/sam/roles", json={"remove": ["support"], "reason": "x"}
        ),
    }
    assert {k: v.status_code for k, v in answers.items()} == dict.fromkeys(answers, 422)
    wrong_case = admin.post("/api/users/Sam/roles", json={"add": ["approver"], "reason": "x"})
    assert wrong_case.status_code == 404 and "did you mean 'sam'" in wrong_case.text
    assert _events(site, "user-roles") == []


def test_the_last_enabled_admin_keeps_the_role_and_cannot_be_disabled(site, admin):
    demote = {"remove": ["admin"], "add": ["viewer"], "reason": "stepping down"}
    only = admin.post("/api/users/ada/roles", json=demote)
    assert only.status_code == 422 and "only enabled admin" in only.text
    assert admin.post("/api/users/ada/disable").status_code == 422

    admin.post("/api/users/vic/roles", json={"add": ["admin"], "reason": "second admin"})
    assert admin.post("/api/users/vic/disable").status_code == 200
    assert admin.post("/api/users/ada/roles", json=demote).status_code == 422, "vic is disabled"

    admin.post("/api/users/sam/roles", json={"add": ["admin"], "reason": "second admin"})
    assert admin.post("/api/users/ada/roles", json=demote).status_code == 200
    assert admin.get("/api/users").status_code == 401, "ada's admin-only token: revoked"


def test_a_re_enabled_user_signs_in_again_but_none_of_their_old_tokens_works(site, admin):
    token = api_token(site.running.store, "support", name="sam")
    assert admin.post("/api/users/sam/disable").status_code == 200
    with site.running.store.read() as conn:
        assert conn.scalar(select(api_tokens.c.revoked_by).where(api_tokens.c.id == 2)) == "ada"
    assert admin.post("/api/users/sam/enable", json={}).status_code == 422, "a reason is needed"
    enabled = admin.post("/api/users/sam/enable", json={"reason": "back from leave"})
    assert enabled.status_code == 200, enabled.text
    assert sign_in(site.url, "sam").get("/api/channels").status_code == 200
    with _bearer(site, token) as script:
        assert script.get("/api/channels").status_code == 401
    again = admin.post("/api/users/sam/enable", json={"reason": "twice"})
    assert again.status_code == 422 and "not disabled" in again.text
    assert _events(site, "user-disable")[-1][2] == {"tokens_revoked": [2]}
    assert _events(site, "user-enable") == [
        ("ada", "user:sam", {"reason": "back from leave", "tokens_revoked": []})
    ]


def test_enabling_revokes_tokens_a_disable_only_stopped(site, admin):
    """A user disabled before disabling revoked tokens (or by SQL) has live token rows."""
    token = api_token(site.running.store, "support", name="sam")
    with site.running.store.begin() as conn:
        conn.execute(users.update().where(users.c.name == "sam").values(disabled=True))
    admin.post("/api/users/sam/enable", json={"reason": "back"})
    with _bearer(site, token) as script:
        assert script.get("/api/channels").status_code == 401
    assert _events(site, "user-enable")[0][2]["tokens_revoked"] == [2]


def test_a_user_is_not_enabled_beside_an_enabled_one_differing_only_in_case(site, admin):
    now = utcnow()
    with site.running.store.begin() as conn:
        conn.execute(  # possible before names were compared without case
            users.insert().values(
                name="Sam",
                roles="approver",
                disabled=True,
                created_at=now,
                created_by="old",
                updated_at=now,
            )
        )
    refused = admin.post("/api/users/Sam/enable", json={"reason": "x"})
    assert refused.status_code == 422 and "'sam' is enabled" in refused.text
    admin.post("/api/users/sam/disable")
    assert admin.post("/api/users/Sam/enable", json={"reason": "x"}).status_code == 200


def _sign_in_with(site: Site, name: str, password: str) -> httpx.Client | None:
    """A client with a session for ``name``, or None when the sign-in is refused."""
    client = httpx.Client(base_url=site.url, timeout=10)
    form = client.get("/login")
    data = {"username": name, "password": password, "csrf_token": csrf_of(form.text)}
    return client if client.post("/login", data=data).status_code == 303 else None


def test_an_admin_resets_a_password_and_the_users_sessions_end(site, admin):
    console = sign_in(site.url, "sam")
    reset = admin.post(
        "/api/users/sam/password", json={"password": "a new long password", "reason": "forgot"}
    )
    assert reset.status_code == 200, reset.text
    assert console.get("/api/channels").status_code == 401, "signed out everywhere"
    assert _sign_in_with(site, "sam", PASSWORD) is None
    assert _sign_in_with(site, "sam", "a new long password") is not None
    short = admin.post("/api/users/sam/password", json={"password": "short"})
    assert short.status_code == 422
    assert _events(site, "user-password") == [
        ("ada", "user:sam", {"reason": "forgot", "sessions_ended": 1})
    ]


def test_a_user_changes_their_own_password_with_the_current_one(site):
    here, elsewhere = sign_in(site.url, "sam"), sign_in(site.url, "sam")
    csrf = {"X-CSRF-Token": csrf_of(here.get("/").text)}
    new = "my own new password"
    wrong = here.post(
        "/api/me/password",
        json={"current_password": "a wrong guess", "new_password": new},
        headers=csrf,
    )
    assert wrong.status_code == 403
    short = here.post(
        "/api/me/password", json={"current_password": PASSWORD, "new_password": "x"}, headers=csrf
    )
    assert short.status_code == 422
    changed = here.post(
        "/api/me/password", json={"current_password": PASSWORD, "new_password": new}, headers=csrf
    )
    assert changed.status_code == 204, changed.text
    assert here.get("/api/channels").status_code == 200, "the session that asked stays"
    assert elsewhere.get("/api/channels").status_code == 401, "every other one ends"
    assert _sign_in_with(site, "sam", new) is not None
    assert _events(site, "user-password") == [("sam", "user:sam", {"sessions_ended": 1})]
    failed = _events(site, "login-failed")
    assert [(e[0], e[2]["reason"]) for e in failed] == [("sam", "wrong current password")]


def test_guessing_the_current_password_is_throttled_as_signing_in_is(site):
    site.running.engine.http.config.app.state.auth.throttle = LoginThrottle(free=5, first=600.0)
    here = sign_in(site.url, "vic")
    csrf = {"X-CSRF-Token": csrf_of(here.get("/").text)}
    guesses = [
        here.post(
            "/api/me/password",
            json={"current_password": f"guess number {i}", "new_password": "x" * 12},
            headers=csrf,
        ).status_code
        for i in range(7)
    ]
    assert guesses == [403] * 5 + [429] * 2
    right = {"current_password": PASSWORD, "new_password": "x" * 12}
    assert here.post("/api/me/password", json=right, headers=csrf).status_code == 429
    failures = [e[2] for e in _events(site, "login-failed")]
    assert [(e["reason"], e.get("refused")) for e in failures] == [
        ("wrong current password", None)
    ] * 5 + [("throttled", 1)], "refused tries: one row a minute per name, with a count"


def test_a_rotated_token_works_beside_the_new_one_for_the_overlap_then_expires(site, admin):
    issued = admin.post(
        "/api/users/vic/tokens",
        json={"roles": ["viewer"], "expires_at": (utcnow() + timedelta(days=90)).isoformat()},
    ).json()
    rotated = admin.post(f"/api/users/tokens/{issued['id']}/rotate", json={"overlap": "2h"})
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    with _bearer(site, issued["token"]) as old_one, _bearer(site, new["token"]) as new_one:
        assert old_one.get("/api/channels").status_code == 200, "both work during the overlap"
        assert new_one.get("/api/channels").status_code == 200
        with site.running.store.begin() as conn:
            t = api_tokens.c
            old_until = conn.scalar(select(t.expires_at).where(t.id == issued["id"]))
            new_until = conn.scalar(select(t.expires_at).where(t.id == new["id"]))
            assert timedelta(hours=2) - (old_until - utcnow()) < timedelta(minutes=1)
            assert timedelta(days=90) - (new_until - utcnow()) < timedelta(minutes=1)
            conn.execute(  # the overlap has passed
                api_tokens.update().where(t.id == issued["id"]).values(expires_at=utcnow())
            )
        assert old_one.get("/api/channels").status_code == 401
        assert new_one.get("/api/channels").status_code == 200
    again = admin.post(f"/api/users/tokens/{issued['id']}/rotate", json={})
    assert again.status_code == 422, "an expired token is not rotated: issue a new one"
    event = _events(site, "token-rotate")[0]
    assert event[:2] == ("ada", "user:vic")
    assert (event[2]["token"], event[2]["new_token"]) == (issued["id"], new["id"])


def test_the_overlap_never_lengthens_the_old_tokens_life(site, admin):
    soon = utcnow() + timedelta(minutes=10)
    body = {"roles": ["viewer"], "expires_at": soon.isoformat()}
    token_id = admin.post("/api/users/vic/tokens", json=body).json()["id"]
    admin.post(f"/api/users/tokens/{token_id}/rotate", json={"overlap": "7d"})
    with site.running.store.read() as conn:
        until = conn.scalar(select(api_tokens.c.expires_at).where(api_tokens.c.id == token_id))
    assert abs(until - soon) < timedelta(seconds=1)


def test_tokens_expiring_soon_are_listed_soonest_first(site, admin):
    def issue(days: int) -> int:
        until = (utcnow() + timedelta(days=days)).isoformat()
        body = {"roles": ["viewer"], "expires_at": until}
        return admin.post("/api/users/vic/tokens", json=body).json()["id"]

    later, sooner, far = issue(20), issue(5), issue(200)
    revoked = issue(1)
    admin.delete(f"/api/users/tokens/{revoked}")
    listed = admin.get("/api/users/tokens/expiring", params={"within": "30d"}).json()["tokens"]
    assert [(t["id"], t["state"]) for t in listed] == [(sooner, "live"), (later, "live")]
    assert far not in [t["id"] for t in listed]
    bad = admin.get("/api/users/tokens/expiring", params={"within": "soon"})
    assert bad.status_code == 422


def test_two_admins_demoting_each_other_at_once_leave_one(store_url):
    """Each checks that another admin remains, then demotes: without taking turns both
    checks pass on PostgreSQL and nobody is left to manage users."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from router.auth.accounts import change_roles
    from router.auth.users import add_user
    from router.store.database import Store
    from router.store.migrate import upgrade

    store = Store(store_url)
    upgrade(store)
    barrier = Barrier(2)

    def demote(actor: str, target: str) -> bool:
        barrier.wait()
        try:
            with store.begin() as conn:
                remove, add = ["admin"], ["viewer"]
                change_roles(conn, target, remove=remove, add=add, actor=actor, reason="race")
            return True
        except ValueError:
            return False

    try:
        for round_ in range(10):
            a, b = f"a{round_}", f"b{round_}"
            with store.begin() as conn:
                conn.execute(users.update().values(disabled=True))
                add_user(conn, a, ["admin"], None, actor="test")
                add_user(conn, b, ["admin"], None, actor="test")
            with ThreadPoolExecutor(2) as pool:
                done = list(pool.map(demote, [a, b], [b, a]))
            assert sorted(done) == [False, True], f"round {round_}"
            with store.read() as conn:
                enabled = users.c.disabled.is_(False)
                admins = conn.scalars(select(users.c.name).where(users.c.roles == "admin", enabled))
                assert len(admins.all()) == 1
    finally:
        store.dispose()
