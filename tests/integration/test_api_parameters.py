"""The JSON API's parameters as scripts send them, over a real socket: times at the edges of
the calendar and in other zones, and the answers to what is out of range (422, never 500)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from console_testing import Site, order, running_site
from tie_testing import api_token

from router.governance.models import (
    APPROVED,
    DEPLOY_FAILED,
    DEPLOYED,
    OPEN,
    PENDING,
    PROPOSED,
    REJECTED,
    RELEASED,
    SUPERSEDED,
)

OML = "OML_O21_nhs_nwgmsa_v251"
REVISION_STATES = (PROPOSED, APPROVED, DEPLOYED, REJECTED, SUPERSEDED, DEPLOY_FAILED)


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, {}) as running:
        yield running


@pytest.fixture
def admin(site: Site) -> Iterator[httpx.Client]:
    token = api_token(site.running.store, "admin", name="ada")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=site.url, timeout=10, headers=headers) as client:
        yield client


# Valid ISO 8601 times whose UTC is before the year 1 or after 9999.
BEFORE_YEAR_ONE = "0001-01-01T00:00:00+01:00"
AFTER_9999 = "9999-12-31T23:59:59-01:00"


@pytest.mark.parametrize("moment", [BEFORE_YEAR_ONE, AFTER_9999])
def test_a_time_outside_the_years_utc_holds_is_a_422(site, admin, moment):
    searches = [("/api/messages", name) for name in ("since", "until")]
    searches += [("/api/audit", name) for name in ("since", "until")]
    for path, name in searches:
        answer = admin.get(path, params={name: moment})
        assert answer.status_code == 422, (path, name, answer.text)
        assert "outside the years 1 to 9999" in answer.json()["detail"][0]["msg"]
    for path in ("/api/messages/reprocess", "/api/deliveries/resend"):
        body = {"search": {"since": moment}, "reason": "INC-1", "dry_run": True}
        assert admin.post(path, json=body).status_code == 422, path
    token = {"roles": ["viewer"], "expires_at": moment}
    assert admin.post("/api/users/ada/tokens", json=token).status_code == 422


def test_a_time_with_a_zone_is_read_in_utc(site, admin, hl7_samples):
    site.send_and_settle(order(hl7_samples[OML], "ZONE-1"), "ZONE-1", "sent")
    (found,) = admin.get("/api/messages").json()["messages"]
    received = found["received_at"]  # UTC, +00:00
    later = received.replace("+00:00", "-01:00")  # an hour after it
    earlier = received.replace("+00:00", "+01:00")  # an hour before it
    assert admin.get("/api/messages", params={"until": later}).json()["messages"] == [found]
    assert admin.get("/api/messages", params={"since": later}).json()["messages"] == []
    assert admin.get("/api/messages", params={"since": earlier}).json()["messages"] == [found]


def test_a_time_given_as_a_number_is_a_422_not_unix_seconds(site, admin):
    """20261122 is ISO 8601's basic form of a date: read as Unix seconds it was a day in
    1970, and the search answered for the wrong window without a word."""
    for number in ("20261122", "1700000000", "0.5", "-1"):
        for path in ("/api/messages", "/api/audit"):
            answer = admin.get(path, params={"since": number})
            assert answer.status_code == 422, (path, number, answer.text)
            assert "ISO 8601" in answer.json()["detail"][0]["msg"]
        body = {"search": {"until": float(number)}, "reason": "INC-1", "dry_run": True}
        assert admin.post("/api/messages/reprocess", json=body).status_code == 422
        token = {"roles": ["viewer"], "expires_at": int(float(number))}
        assert admin.post("/api/users/ada/tokens", json=token).status_code == 422


def test_a_bulk_reprocess_takes_the_ids_the_search_answers(site, admin, hl7_samples):
    """The search gives each message's ``id`` as a JSON number: a script feeds them back."""
    for n in range(2):
        site.send_and_settle(order(hl7_samples[OML], f"IDS-{n}"), f"IDS-{n}", "sent")
    ids = [m["id"] for m in admin.get("/api/messages").json()["messages"]]
    assert all(isinstance(i, int) for i in ids)
    answer = admin.post("/api/messages/reprocess", json={"ids": ids, "reason": "INC-7"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["count"] == 2
    assert all(r["copy"] for r in answer.json()["results"])
    mixed = {"ids": [ids[0], str(ids[1])], "reason": "INC-7", "dry_run": True}
    assert admin.post("/api/messages/reprocess", json=mixed).json()["count"] == 2
    for bad in (0, 2**63, 1.5):
        body = {"ids": [bad], "reason": "INC-7", "dry_run": True}
        assert admin.post("/api/messages/reprocess", json=body).status_code == 422, bad
    unknown = {"ids": [max(ids) + 1000], "reason": "INC-7"}
    assert admin.post("/api/messages/reprocess", json=unknown).status_code == 404


def test_a_state_filter_names_a_state_or_is_a_422(site, admin):
    """A typo in ``state`` answered 200 with an empty list, which reads as "none"."""
    for path, states in (
        ("/api/revisions", REVISION_STATES),
        ("/api/holds", (OPEN, PENDING, RELEASED, REJECTED)),
    ):
        for state in states:
            assert admin.get(path, params={"state": state}).status_code == 200, (path, state)
        for typo in ("Proposed", "pendng", "bogus"):
            answer = admin.get(path, params={"state": typo})
            assert answer.status_code == 422, (path, typo, answer.text)


def test_the_tokens_of_no_such_user_are_a_404(site, admin):
    """Issuing a token for a name nobody holds is a 404; listing its tokens answered 200 []."""
    assert admin.post("/api/users/nobody/tokens", json={"roles": ["viewer"]}).status_code == 404
    answer = admin.get("/api/users/nobody/tokens")
    assert (answer.status_code, answer.json()) == (404, {"detail": "no user 'nobody'"})
    (token,) = admin.get("/api/users/ada/tokens").json()["tokens"]
    assert (token["user"], token["roles"]) == ("ada", ["admin"])
