"""The JSON API's parameters as scripts send them, over a real socket: times at the edges of
the calendar and in other zones, and the answers to what is out of range (422, never 500)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from console_testing import Site, order, running_site
from tie_testing import announced_post, api_token, wait_until

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


def _client(site: Site, *roles: str, name: str) -> httpx.Client:
    token = api_token(site.running.store, *roles, name=name)
    return httpx.Client(base_url=site.url, timeout=10, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def admin(site: Site) -> Iterator[httpx.Client]:
    with _client(site, "admin", name="ada") as client:
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


_JSON_TYPES = {str: "string", list: "array", dict: "object"}


def _documented(spec: dict, path: str, method: str, answer: httpx.Response) -> bool:
    """Whether /openapi.json declares this status for the operation, with a ``detail`` of
    the JSON type the answer has (what a client generated from the schema would parse)."""
    responses = spec["paths"][path][method]["responses"]
    declared = responses.get(str(answer.status_code))
    if declared is None:
        return False
    ref = declared["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    detail = schema["properties"]["detail"]
    types = {option.get("type") for option in detail.get("anyOf", [detail])}
    return _JSON_TYPES[type(answer.json()["detail"])] in types


def test_every_error_answer_is_declared_in_the_openapi_schema(site, admin):
    spec = admin.get("/openapi.json").json()
    anonymous = httpx.Client(base_url=site.url, timeout=10)
    viewer = _client(site, "viewer", name="vic")
    answers = [
        ("/api/messages/{ref}", "get", anonymous.get("/api/messages/1"), 401),
        ("/api/messages/{ref}", "get", viewer.get("/api/messages/1"), 403),
        ("/api/messages/{ref}", "get", admin.get("/api/messages/1"), 404),
        ("/api/messages", "get", admin.get("/api/messages", params={"limit": 0}), 422),
        (
            "/api/messages/reprocess",
            "post",
            admin.post("/api/messages/reprocess", json={"reason": "x"}),
            422,
        ),
        (
            "/api/revisions",
            "post",
            admin.post("/api/revisions", json={"channel": "lab-orders", "yaml": "x: 1"}),
            409,
        ),
        (
            "/api/endpoints",
            "get",
            admin.get("/api/endpoints", params={"key": "nonsense"}),
            422,
        ),
        (
            "/api/messages/{ref}/reprocess",
            "post",
            announced_post(
                site.url,
                "/api/messages/1/reprocess",
                {"Authorization": admin.headers["authorization"]},
                b'{"reason": ',
                3 << 20,
            ),
            413,
        ),
    ]
    anonymous.close()
    viewer.close()
    for path, method, answer, status in answers:
        assert answer.status_code == status, (path, answer.text)
        assert _documented(spec, path, method, answer), (path, status, answer.text)


def test_head_is_answered_wherever_get_is(site, admin):
    """Monitors and load balancers probe with HEAD; it answered 405 (Allow: GET)."""
    anonymous = httpx.Client(base_url=site.url, timeout=10)
    for client, path in ((anonymous, "/health"), (admin, "/api/channels"), (admin, "/metrics")):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, (path, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
    refused = anonymous.head("/api/channels")
    assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
    assert admin.head("/api/messages/999").status_code == 404
    anonymous.close()


def test_a_405_allows_every_method_the_path_is_served_with(site, admin):
    """GET and POST /api/endpoints are two routes: a 405 said Allow: GET, hiding POST."""
    for path, allow in (
        ("/api/endpoints", "GET, HEAD, POST"),
        ("/api/users/ada/tokens", "GET, HEAD, POST"),
        ("/api/endpoints/1", "DELETE, GET, HEAD"),
        ("/api/deliveries/resend", "POST"),
        ("/api/messages/reprocess", "GET, HEAD, POST"),  # GET: the message ref "reprocess"
        ("/health", "GET, HEAD"),
    ):
        refused = admin.request("PATCH", path)
        assert refused.status_code == 405, path
        assert refused.headers["allow"] == allow, path
        assert refused.json() == {"detail": "Method Not Allowed"}


def test_a_pause_with_a_misspelt_field_is_a_422_and_pauses_nothing(site, admin):
    """{"reson": ...} paused the channel with an empty reason in its audit event."""
    pause = "/api/channels/lab-orders/pause"
    answer = admin.post(pause, json={"reson": "INC-9"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "reson"]
    (row,) = admin.get("/api/channels").json()
    assert row["paused"] is False
    assert admin.post(pause, json={"reason": "INC-9"}).json()["paused"] is True
    (event,) = admin.get("/api/audit", params={"action": "pause"}).json()["events"]
    assert event["details"] == {"reason": "INC-9"}
    assert admin.post("/api/channels/lab-orders/resume").json()["paused"] is False


def test_a_bulk_replay_naming_ids_and_a_search_is_a_422(site, admin, hl7_samples):
    """Given both, the ids were replayed and the search ignored without a word."""
    site.send_and_settle(order(hl7_samples[OML], "BOTH-1"), "BOTH-1", "sent")
    (found,) = admin.get("/api/messages").json()["messages"]
    search = {"channel": "lab-orders", "control_id": "nothing-matches"}
    for path, ids in (("/api/messages/reprocess", [found["id"]]), ("/api/deliveries/resend", [1])):
        answer = admin.post(path, json={"ids": ids, "search": search, "reason": "INC-3"})
        assert answer.status_code == 422, (path, answer.text)
        assert "not both" in answer.json()["detail"][0]["msg"]
    assert len(admin.get("/api/messages").json()["messages"]) == 1, "nothing reprocessed"
    assert site.delivery_status("BOTH-1") == ["sent"], "nothing resent"


def test_a_bulk_replay_naming_one_twice_replays_it_once(site, admin, hl7_samples):
    """The dry run listed a repeated id once; the run resent (or reprocessed) it each time."""
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "TWICE-1"), "TWICE-1", "failed")
    (found,) = admin.get("/api/messages").json()["messages"]
    (delivery,) = admin.get(f"/api/messages/{found['id']}").json()["deliveries"]
    site.lab.code = "AA"
    for dry_run in (True, False):
        body = {"ids": [delivery["id"]] * 2, "reason": "INC-5", "dry_run": dry_run}
        assert admin.post("/api/deliveries/resend", json=body).json()["count"] == 1, dry_run
        refs = [found["id"], found["uuid"], f"urn:tie:message:{found['uuid']}"]
        body = {"ids": refs, "reason": "INC-5", "dry_run": dry_run}
        assert admin.post("/api/messages/reprocess", json=body).json()["count"] == 1, dry_run
    assert len(admin.get("/api/messages").json()["messages"]) == 2, "one reprocessed copy"

    def statuses() -> list[str]:
        deliveries = admin.get(f"/api/messages/{found['id']}").json()["deliveries"]
        return sorted(d["status"] for d in deliveries)

    wait_until(lambda: statuses() == ["resent", "sent"])


def test_a_token_that_expired_before_it_was_issued_is_a_422(site, admin):
    """A token past its expiry (a script's expiry computed in the wrong zone, say) was issued
    with 201 and answered 401 at its first use."""
    past = {"roles": ["viewer"], "expires_at": "2020-01-01T00:00:00Z"}
    answer = admin.post("/api/users/ada/tokens", json=past)
    assert answer.status_code == 422, answer.text
    assert len(admin.get("/api/users/ada/tokens").json()["tokens"]) == 1, "none issued"
    future = {"roles": ["viewer"], "expires_at": "2100-01-01T00:00:00+01:00"}
    issued = admin.post("/api/users/ada/tokens", json=future)
    assert issued.status_code == 201
    headers = {"Authorization": f"Bearer {issued.json()['token']}"}
    assert httpx.get(f"{site.url}/api/channels", headers=headers).status_code == 200


def test_an_endpoint_filter_names_a_transport_or_is_a_422(site, admin):
    for transport in ("fhir", "mllp", "mesh"):
        answer = admin.get("/api/endpoints", params={"transport": transport})
        assert answer.status_code == 200, transport
    assert admin.get("/api/endpoints", params={"transport": "MLLP"}).status_code == 422


def test_concurrent_first_pauses_of_a_channel_all_succeed(site, admin):
    """The switch's UPDATE found no row in each of them and each INSERTed: on PostgreSQL all
    but one failed with a key violation, answered 500."""
    headers = dict(admin.headers)
    barrier = threading.Barrier(6)

    def pause(_: int) -> int:
        with httpx.Client(base_url=site.url, timeout=30, headers=headers) as client:
            barrier.wait()
            return client.post("/api/channels/lab-orders/pause", json={"reason": "r"}).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(pause, range(6))) == [200] * 6
    (row,) = admin.get("/api/channels").json()
    assert row["paused"] is True
    assert len(admin.get("/api/audit", params={"action": "pause"}).json()["events"]) == 6
    assert admin.get("/api/audit/verify").json()["ok"] is True


def test_concurrent_puts_of_one_endpoint_all_succeed(site, admin):
    """Each put UPDATEd no row and INSERTed: on PostgreSQL all but one hit the unique key."""
    headers = dict(admin.headers)
    barrier = threading.Barrier(6)
    body = {"key": "ods:X26", "interaction": "pathology-result", "transport": "mesh"}

    def put(n: int) -> int:
        with httpx.Client(base_url=site.url, timeout=30, headers=headers) as client:
            barrier.wait()
            answer = client.post("/api/endpoints", json={**body, "address": f"X26HUB0{n}"})
            return answer.status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(put, range(6))) == [201] * 6
    (endpoint,) = admin.get("/api/endpoints", params={"key": "ods:X26"}).json()["endpoints"]
    assert endpoint["address"].startswith("X26HUB0")


def test_the_search_filters_by_delivery_status_and_counts_each_rows_deliveries(
    site, admin, hl7_samples
):
    """As ``run.py messages --delivery-status failed``: a message whose delivery failed is
    ``processed``, so only its deliveries tell it from one delivered."""
    site.send_and_settle(order(hl7_samples[OML], "DS-SENT"), "DS-SENT", "sent")
    site.lab.code = "AR"
    site.send_and_settle(order(hl7_samples[OML], "DS-FAILED"), "DS-FAILED", "failed")
    found = admin.get("/api/messages", params={"delivery_status": "failed"})
    assert found.status_code == 200, found.text
    [failed] = found.json()["messages"]
    assert (failed["control_id"], failed["deliveries"]) == ("DS-FAILED", {"failed": 1})
    listed = admin.get("/api/messages").json()["messages"]
    assert [(m["control_id"], m["deliveries"]) for m in listed] == [
        ("DS-FAILED", {"failed": 1}),
        ("DS-SENT", {"sent": 1}),
    ]
    assert admin.get("/api/messages", params={"delivery_status": "Failed"}).status_code == 422
