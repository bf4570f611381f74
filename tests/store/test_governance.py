"""The four-eyes rules of the governance services, on SQLite and PostgreSQL.

Revisions: nobody approves their own; every revision is kept; a rollback is a new one.
Holds: N distinct approvers; neither the channel's owner nor the batch's creator alone;
rejecting cancels. Each action is audited with its actor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from tie_testing import engine_config, wait_until

from router import audit, governance
from router.auth.users import add_user
from router.config import load_channels
from router.governance.deploy import (
    bootstrap,
    mark_deployed,
    record_deployed,
    running_channels,
    startup_channels,
)
from router.governance.holds import release_shortfall
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.schema import audit_events, channel_revisions, deliveries

FILTER = "filter:\n  - field: MSH-9.1\n    equals: {kind}\n"


def channel_text(kind: str = "ORU", hold: int | None = None) -> str:
    held = f"    hold: {{approvals: {hold}, summary: labels:ods}}\n" if hold else ""
    return (
        "name: results\nsource:\n  mllp: {host: 127.0.0.1, port: 0}\n"
        + FILTER.format(kind=kind)
        + "destinations:\n  lab:\n    mllp: {host: 127.0.0.1, port: 9}\n"
        + held
    )


@pytest.fixture
def governed(store: Store, tmp_path: Path):
    """A governed engine configuration with one channel file, bootstrapped, and five users."""
    config = engine_config(tmp_path, store.url, governance="governed")
    config.channels.mkdir()
    (config.channels / "results.yaml").write_text(channel_text())
    (config.mappings / "labels.py").write_text("def ods(message):\n    return {'ods': 'A1'}\n")
    with store.begin() as conn:
        add_user(conn, "erin", ["engineer"], None, actor="test")
        add_user(conn, "ada", ["approver"], None, actor="test")
        add_user(conn, "bob", ["approver"], None, actor="test")
        add_user(conn, "eve", ["engineer", "approver"], None, actor="test")
        add_user(conn, "sam", ["support"], None, actor="test")
        add_user(conn, "val", ["viewer"], None, actor="test")
    assert bootstrap(store, config) == ["results"]
    return config


def actions(store: Store) -> list[tuple[str, str]]:
    with store.read() as conn:
        rows = conn.execute(select(audit_events.c.actor, audit_events.c.action))
        return [(r.actor, r.action) for r in rows if r.action.split(".")[0] in ("revision", "hold")]


def test_bootstrap_records_the_files_once_as_the_approved_baseline(store, governed):
    [baseline] = governance.list_revisions(store, "results")
    assert (baseline.number, baseline.state, baseline.author) == (1, "deployed", "bootstrap")
    assert bootstrap(store, governed) == []
    assert ("bootstrap", "revision.bootstrap") in actions(store)
    assert running_channels(store, governed)["results"].filter[0].equals == "ORU"


def test_the_author_cannot_approve_their_own_revision(store, governed):
    proposal = governance.propose(store, governed, "results", channel_text("ADT"), actor="eve")
    assert (proposal.number, proposal.state, proposal.based_on) == (2, "proposed", 1)
    with pytest.raises(governance.FourEyesViolation):
        governance.approve(store, governed, "results", 2, actor="eve")
    assert governance.get_revision(store, "results", 2).state == "proposed"

    approved = governance.approve(store, governed, "results", 2, actor="ada")
    assert (approved.state, approved.approver) == ("approved", "ada")
    assert mark_deployed(store, "results", 2, actor="engine@test")
    states = {r.number: r.state for r in governance.list_revisions(store, "results")}
    assert states == {1: "superseded", 2: "deployed"}
    assert actions(store)[-3:] == [
        ("eve", "revision.propose"),
        ("ada", "revision.approve"),
        ("engine@test", "revision.deploy"),
    ]


def test_roles_are_enforced_by_the_service(store, governed):
    with pytest.raises(governance.RoleRequired):
        governance.propose(store, governed, "results", channel_text("ADT"), actor="ada")
    with pytest.raises(governance.RoleRequired):
        governance.propose(store, governed, "results", channel_text("ADT"), actor="nobody")
    governance.propose(store, governed, "results", channel_text("ADT"), actor="erin")
    with pytest.raises(governance.RoleRequired):
        governance.approve(store, governed, "results", 2, actor="val")


def test_approval_refuses_a_revision_whose_mapping_no_longer_loads(store, governed, monkeypatch):
    """Approving re-checks the text: a mapping removed since the proposal would make an
    approved revision that cannot run (and would keep a restarted engine from starting)."""
    (governed.mappings / "tidy.py").write_text("def f(message):\n    return message\n")
    text = channel_text("ADT").replace("filter:", "transform: tidy:f\nfilter:")
    governance.propose(store, governed, "results", text, actor="erin")
    (governed.mappings / "tidy.py").unlink()
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy")  # as in the approver's own process
    with pytest.raises(governance.InvalidRevision, match="tidy") as caught:
        governance.approve(store, governed, "results", 2, actor="ada")
    assert any("tidy" in problem for problem in caught.value.problems)
    assert governance.get_revision(store, "results", 2).state == "proposed"
    assert ("ada", "revision.approve") not in actions(store)


def test_invalid_text_and_no_change_are_refused(store, governed):
    with pytest.raises(governance.InvalidRevision) as caught:
        governance.propose(store, governed, "results", "name: results\nsource: {}\n", actor="erin")
    assert caught.value.problems
    with pytest.raises(governance.GovernanceError, match="no change"):
        governance.propose(store, governed, "results", channel_text(), actor="erin")


def test_diff_reject_supersede_and_rollback_keep_every_revision(store, governed):
    governance.propose(store, governed, "results", channel_text("ADT"), actor="erin")
    diff = governance.diff(store, "results")
    assert (diff.number, diff.against) == (2, 1)
    assert "-    equals: ORU\n+    equals: ADT\n" in diff.text
    governance.propose(store, governed, "results", channel_text("OML"), actor="erin")
    assert governance.get_revision(store, "results", 2).state == "superseded"
    with pytest.raises(governance.GovernanceError, match="reason"):
        governance.reject(store, "results", 3, actor="ada", reason=" ")
    rejected = governance.reject(store, "results", 3, actor="ada", reason="wrong type")
    assert (rejected.state, rejected.approver, rejected.reason) == ("rejected", "ada", "wrong type")

    governance.propose(store, governed, "results", channel_text("ADT"), actor="erin")
    governance.approve(store, governed, "results", 4, actor="bob")
    mark_deployed(store, "results", 4, actor="engine@test")
    back = governance.rollback(store, governed, "results", 1, actor="erin")
    assert (back.number, back.state, back.based_on, back.yaml) == (5, "proposed", 4, channel_text())
    assert [r.number for r in governance.list_revisions(store, "results")] == [5, 4, 3, 2, 1]
    assert audit.verify(store).ok


def test_open_mode_records_deployed_revisions_by_the_reloader(store, tmp_path):
    config = engine_config(tmp_path, store.url)
    config.channels.mkdir()
    (config.channels / "results.yaml").write_text(channel_text())
    assert set(startup_channels(store, config)) == {"results"}
    assert record_deployed(store, "results", channel_text("ADT"), actor="olly", reason="r") == 2
    [latest, first] = governance.list_revisions(store, "results")
    assert (latest.author, latest.state, first.author, first.state) == (
        "olly",
        "deployed",
        "startup",
        "superseded",
    )
    assert set(load_channels(config.channels)) == {"results"}


# --- holds -------------------------------------------------------------------------------


def test_release_rule_in_isolation():
    assert release_shortfall(2, {"ada"}, owner=None, creator="sam") is not None
    assert release_shortfall(2, {"ada", "bob"}, owner="ada", creator="sam") is None
    # The channel's owner and the creator each cannot release alone, even where one suffices.
    assert "eve" in (release_shortfall(1, {"eve"}, owner="eve", creator="sam") or "")
    assert "sam" in (release_shortfall(1, {"sam"}, owner=None, creator="sam") or "")
    assert release_shortfall(1, {"bob"}, owner="eve", creator="sam") is None
    # Two distinct people are needed even when both are owner and creator between them.
    assert release_shortfall(2, {"eve", "sam"}, owner="eve", creator="sam") is None


def _held(store: Store, receive, er7, count: int) -> list[int]:
    """``count`` messages with a held delivery each to results/lab."""
    ids = receive("results", *(er7(f"H{i}", kind="ORU^R01") for i in range(count)))
    now = utcnow()
    with store.begin() as conn:
        conn.execute(
            deliveries.insert(),
            [
                {
                    "message_id": i,
                    "channel": "results",
                    "destination": "lab",
                    "status": "held",
                    "content_type": "hl7v2",
                    "payload": b"x",
                    "hold_labels": json.dumps({"ods": "A1" if i % 2 else "B2"}),
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in ids
            ],
        )
    return ids


def _statuses(store: Store) -> list[str]:
    with store.read() as conn:
        return list(conn.scalars(select(deliveries.c.status).order_by(deliveries.c.id)))


def _hold_channel(store: Store, config, approvals: int, owner: str) -> dict:
    governance.propose(store, config, "results", channel_text(hold=approvals), actor=owner)
    governance.approve(store, config, "results", 2, actor="bob" if owner != "bob" else "ada")
    mark_deployed(store, "results", 2, actor="engine@test")
    return running_channels(store, config)


def test_two_distinct_approvers_release_a_batch(store, governed, receive, er7):
    channels = _hold_channel(store, governed, 2, owner="eve")
    _held(store, receive, er7, 3)
    with pytest.raises(governance.RoleRequired):
        governance.request_release(store, channels, "results", "lab", actor="val")
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    assert (batch.state, batch.deliveries, batch.required, batch.channel_owner) == (
        "pending",
        3,
        2,
        "eve",
    )
    late = _held(store, receive, er7, 1)  # after the request: the next open batch
    summary = governance.batch_summary(store, batch.id)
    assert summary.by_destination == {"lab": 3}
    assert summary.by_message_type == {"ORU^R01": 3}
    assert sum(summary.labels["ods"].values()) == 3

    with pytest.raises(governance.RoleRequired):
        governance.approve_batch(store, batch.id, actor="sam")
    first = governance.approve_batch(store, batch.id, actor="ada")
    assert first.state == "pending" and "1 more" in (first.waiting_for or "")
    with pytest.raises(governance.FourEyesViolation):
        governance.approve_batch(store, batch.id, actor="ada")
    assert _statuses(store) == ["held"] * 4
    released = governance.approve_batch(store, batch.id, actor="bob")
    assert released.state == "released" and released.approvers == ("ada", "bob")
    assert _statuses(store) == ["queued"] * 3 + ["held"]
    [open_batch] = governance.list_batches(store, states=("open",))
    assert (open_batch.deliveries, late) == (1, late)
    assert [a for _, a in actions(store)][-4:] == [
        "hold.request",
        "hold.approve",
        "hold.approve",
        "hold.release",
    ]


def test_the_channel_owner_cannot_release_alone(store, governed, receive, er7):
    channels = _hold_channel(store, governed, 1, owner="eve")
    _held(store, receive, er7, 2)
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    alone = governance.approve_batch(store, batch.id, actor="eve")
    assert alone.state == "pending" and "eve" in (alone.waiting_for or "")
    assert _statuses(store) == ["held", "held"]
    assert governance.approve_batch(store, batch.id, actor="ada").state == "released"


def test_the_batch_creator_cannot_release_alone(store, governed, receive, er7):
    channels = _hold_channel(store, governed, 1, owner="erin")
    _held(store, receive, er7, 1)
    batch = governance.request_release(store, channels, "results", "lab", actor="ada")
    assert governance.approve_batch(store, batch.id, actor="ada").state == "pending"
    assert governance.approve_batch(store, batch.id, actor="bob").state == "released"


def test_rejecting_cancels_the_batch_with_its_reason(store, governed, receive, er7):
    channels = _hold_channel(store, governed, 2, owner="eve")
    _held(store, receive, er7, 2)
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    governance.approve_batch(store, batch.id, actor="ada")
    rejected = governance.reject_batch(store, batch.id, actor="bob", reason="wrong month")
    assert (rejected.state, rejected.reason, rejected.decided_by) == (
        "rejected",
        "wrong month",
        "bob",
    )
    assert _statuses(store) == ["cancelled", "cancelled"]
    with store.read() as conn:
        errors = set(conn.scalars(select(deliveries.c.last_error)))
    assert errors == {"release rejected by bob: wrong month"}
    with pytest.raises(governance.GovernanceError):
        governance.approve_batch(store, batch.id, actor="ada")
    assert audit.verify(store).ok


def test_a_resend_of_a_held_delivery_is_held_again(store, governed, receive, er7):
    from router.replay import resend

    channels = _hold_channel(store, governed, 1, owner="eve")
    [message] = _held(store, receive, er7, 1)
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    governance.reject_batch(store, batch.id, actor="bob", reason="not yet")
    with store.read() as conn:
        delivery = conn.scalar(select(deliveries.c.id).where(deliveries.c.message_id == message))
    resend(store, delivery, reason="now", actor="sam")
    assert _statuses(store) == ["cancelled", "held"]
    [open_batch] = governance.list_batches(store, states=("open",))
    assert open_batch.deliveries == 1


def test_a_listener_port_clash_with_another_channel_is_refused(store, governed):
    zzz = channel_text().replace("name: results", "name: zzz").replace("port: 0", "port: 2999")
    governance.propose(store, governed, "zzz", zzz, actor="erin")
    governance.approve(store, governed, "zzz", 1, actor="ada")
    clash = channel_text().replace("port: 0", "port: 2999")
    with pytest.raises(governance.InvalidRevision, match="conflicts"):
        governance.propose(store, governed, "results", clash, actor="erin")


def test_proposals_are_refused_in_open_mode(store, tmp_path):
    config = engine_config(tmp_path, store.url)
    with pytest.raises(governance.GovernanceError, match="open"):
        governance.propose(store, config, "results", channel_text(), actor="erin")


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_two_approvers_at_once_release_the_batch(store, governed, receive, er7, monkeypatch):
    """On PostgreSQL the second approver's transaction may start before the first commits:
    it must wait and count the first approval, else both leave the batch pending for good."""
    import threading

    from sqlalchemy import text

    from router.governance import holds

    channels = _hold_channel(store, governed, 2, owner="eve")
    _held(store, receive, er7, 1)
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    read_approvers = holds._approvers
    second: list[governance.HeldBatch] = []
    other = threading.Thread(
        target=lambda: second.append(governance.approve_batch(store, batch.id, actor="bob"))
    )

    def waiting_on_a_lock() -> bool:
        with store.read() as conn:
            query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            return bool(conn.scalar(text(query)))

    def approvers_then_bob(conn, ids):
        found = read_approvers(conn, ids)
        if not other.is_alive() and not second:  # ada has read the approvals: bob comes in
            other.start()
            wait_until(lambda: not other.is_alive() or waiting_on_a_lock())
        return found

    monkeypatch.setattr(holds, "_approvers", approvers_then_bob)
    first = governance.approve_batch(store, batch.id, actor="ada")
    other.join()
    assert (first.state, second[0].state) == ("pending", "released")
    assert governance.get_batch(store, batch.id).approvers == ("ada", "bob")
    assert _statuses(store)[-1] == "queued"


def _legacy_user(store: Store, name: str, roles: list[str]) -> None:
    """A user added before names were compared without case (add_user refuses it now)."""
    from router.auth.roles import encode
    from router.store.schema import users

    now = utcnow()
    with store.begin() as conn:
        conn.execute(
            users.insert().values(
                name=name,
                roles=encode(frozenset(roles)),
                disabled=False,
                created_at=now,
                created_by="old",
                updated_at=now,
            )
        )


def test_user_names_that_differ_only_in_case_are_one_person(store, governed, receive, er7):
    from router.auth.users import case_clashes

    with store.begin() as conn, pytest.raises(ValueError, match="exists as 'ada'"):
        add_user(conn, "ADA", ["approver"], None, actor="test")
    assert "1 more" in (release_shortfall(2, {"ada", "Ada"}, owner=None, creator="x") or "")
    assert "Sam" in (release_shortfall(1, {"sam"}, owner=None, creator="Sam") or "")
    assert "Eve" in (release_shortfall(1, {"eve"}, owner="Eve", creator="sam") or "")

    # A store from before the rule may hold both: it works, and four eyes takes them as one.
    _legacy_user(store, "Eve", ["approver"])
    _legacy_user(store, "Ada", ["approver"])
    with store.read() as conn:
        assert case_clashes(conn) == [["Ada", "ada"], ["Eve", "eve"]]
    channels = _hold_channel(store, governed, 1, owner="erin")
    _held(store, receive, er7, 1)
    batch = governance.request_release(store, channels, "results", "lab", actor="ada")
    assert governance.approve_batch(store, batch.id, actor="Ada").state == "pending"
    with pytest.raises(governance.FourEyesViolation):
        governance.approve_batch(store, batch.id, actor="ada")
    assert _statuses(store) == ["held"]
    assert governance.approve_batch(store, batch.id, actor="bob").state == "released"

    number = governance.propose(store, governed, "results", channel_text("ADT"), actor="eve").number
    with pytest.raises(governance.FourEyesViolation):
        governance.approve(store, governed, "results", number, actor="Eve")


def test_concurrent_proposals_for_one_channel_all_succeed(store, governed):
    """Each read the highest number and inserted the next: on PostgreSQL all but one hit the
    unique (channel, number) key. Each must get its own number, the newest superseding the
    rest, so one proposal stays open."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    kinds = ["ADT", "OML", "ORM", "SIU", "MDM", "DFT"]
    barrier = Barrier(len(kinds))

    def propose(kind: str) -> int:
        barrier.wait()
        text = channel_text(kind)
        return governance.propose(store, governed, "results", text, actor="erin").number

    with ThreadPoolExecutor(len(kinds)) as pool:
        numbers = list(pool.map(propose, kinds))
    assert sorted(numbers) == [2, 3, 4, 5, 6, 7]
    states = [r.state for r in governance.list_revisions(store, "results")]
    assert states == ["proposed"] + ["superseded"] * 5 + ["deployed"]
    assert audit.verify(store).ok


def test_concurrent_open_mode_reloads_of_one_channel_all_record(store, tmp_path):
    """Two nodes reloading one changed channel at once: the same race, in open mode."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    config = engine_config(tmp_path, store.url)
    config.channels.mkdir()
    (config.channels / "results.yaml").write_text(channel_text())
    startup_channels(store, config)
    kinds = ["ADT", "OML", "ORM", "SIU", "MDM", "DFT"]
    barrier = Barrier(len(kinds))

    def record(kind: str) -> int:
        barrier.wait()
        return record_deployed(store, "results", channel_text(kind), actor="olly", reason="r")

    with ThreadPoolExecutor(len(kinds)) as pool:
        numbers = list(pool.map(record, kinds))
    assert sorted(numbers) == [2, 3, 4, 5, 6, 7]
    states = [r.state for r in governance.list_revisions(store, "results")]
    assert states == ["deployed"] + ["superseded"] * 6


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: one engine
def test_nodes_starting_at_once_bootstrap_the_revisions_once(store, tmp_path, monkeypatch):
    """Two governed nodes starting on a new store both found no revisions and both recorded
    revision 1: on PostgreSQL the later one failed on the unique key and did not start."""
    import threading

    from router.governance import deploy

    config = engine_config(tmp_path, store.url, governance="governed")
    config.channels.mkdir()
    (config.channels / "results.yaml").write_text(channel_text())
    digest = deploy.sha256
    second: list[list[str]] = []
    other = threading.Thread(target=lambda: second.append(bootstrap(store, config)))

    def found_none_then_the_other_node(value: str) -> str:
        if not other.is_alive() and not second:  # the first has found no revisions
            other.start()
            wait_until(lambda: not other.is_alive() or _waiting_on_a_lock(store))
        return digest(value)

    monkeypatch.setattr(deploy, "sha256", found_none_then_the_other_node)
    first = bootstrap(store, config)
    other.join()
    assert (first, second) == (["results"], [[]])
    assert [r.number for r in governance.list_revisions(store, "results")] == [1]


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: one writer
def test_a_release_request_meanwhile_is_told_a_batch_awaits(
    store, governed, receive, er7, monkeypatch
):
    """Both found no pending batch and made one: on PostgreSQL the later one then found the
    deliveries taken and answered "nothing is held" (404), not that a batch awaits (409)."""
    import threading

    from router.governance import holds

    channels = _hold_channel(store, governed, 1, owner="eve")
    _held(store, receive, er7, 2)
    owner = holds.channel_owner
    second: list[str] = []

    def request() -> None:
        try:
            governance.request_release(store, channels, "results", "lab", actor="sam")
            second.append("requested")
        except governance.GovernanceError as exc:
            second.append(f"{type(exc).__name__}: {exc}")

    other = threading.Thread(target=request)

    def none_pending_then_another_request(conn, channel):
        if not other.is_alive() and not second:  # the first has found no pending batch
            other.start()
            wait_until(lambda: not other.is_alive() or _waiting_on_a_lock(store))
        return owner(conn, channel)

    monkeypatch.setattr(holds, "channel_owner", none_pending_then_another_request)
    first = governance.request_release(store, channels, "results", "lab", actor="sam")
    other.join()
    assert (first.state, first.deliveries) == ("pending", 2)
    assert second == [f"GovernanceError: batch #{first.id} of results/lab awaits a decision"]


def _waiting_on_a_lock(store: Store) -> bool:
    """Whether some transaction waits for a lock (PostgreSQL)."""
    from sqlalchemy import text

    with store.read() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        return bool(conn.scalar(text(query)))


def test_a_credential_the_author_made_cannot_approve_their_revision(store, governed):
    governance.propose(store, governed, "results", channel_text("ADT"), actor="eve")
    for maker in ("eve", "EVE"):  # a token eve issued, a password eve set, for ada
        with pytest.raises(governance.FourEyesViolation, match="credential eve made"):
            governance.approve(store, governed, "results", 2, actor="ada", made_by=maker)
    assert governance.get_revision(store, "results", 2).state == "proposed"
    assert actions(store)[-2:] == [("ada", "revision.approve-refused")] * 2

    approved = governance.approve(store, governed, "results", 2, actor="ada", made_by="erin")
    assert (approved.state, approved.approver) == ("approved", "ada")


def test_a_credential_the_requester_owner_or_an_approver_made_cannot_approve(
    store, governed, receive, er7
):
    channels = _hold_channel(store, governed, 2, owner="eve")
    _held(store, receive, er7, 1)
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    for maker, why in (("sam", "asked for the release"), ("eve", "last changed channel")):
        with pytest.raises(governance.FourEyesViolation, match=why):
            governance.approve_batch(store, batch.id, actor="ada", made_by=maker)
    assert governance.approve_batch(store, batch.id, actor="ada", made_by=None).approvers == (
        "ada",
    )
    with pytest.raises(governance.FourEyesViolation, match="approved batch"):
        governance.approve_batch(store, batch.id, actor="bob", made_by="ada")
    assert _statuses(store) == ["held"]
    assert [a for _, a in actions(store)].count("hold.approve-refused") == 3
    released = governance.approve_batch(store, batch.id, actor="bob", made_by="bob")
    assert released.state == "released"


def test_an_approval_counts_only_while_its_approver_still_may_approve(
    store, governed, receive, er7
):
    """Ada approved, then lost the approver role: at release her approval no longer counts,
    so Bob's does not release the batch alone; the refusal says why and is audited."""
    from router.auth.accounts import change_roles

    channels = _hold_channel(store, governed, 2, owner="erin")
    _held(store, receive, er7, 2)
    batch = governance.request_release(store, channels, "results", "lab", actor="sam")
    governance.approve_batch(store, batch.id, actor="ada")
    with store.begin() as conn:
        change_roles(conn, "ada", add=["viewer"], remove=["approver"], actor="test", reason="x")
    waiting = governance.approve_batch(store, batch.id, actor="bob")
    assert waiting.state == "pending" and _statuses(store) == ["held", "held"]
    assert "ada no longer holds the approver role" in (waiting.waiting_for or "")
    assert "1 more distinct approver(s)" in (waiting.waiting_for or "")
    assert actions(store)[-1] == ("bob", "hold.release-refused")
    assert governance.get_batch(store, batch.id).waiting_for == waiting.waiting_for
    assert governance.approve_batch(store, batch.id, actor="eve").state == "released"


def test_a_start_does_not_run_a_revision_whose_approver_lost_the_role(store, governed, caplog):
    from router.auth.users import disable_user
    from router.governance.deploy import revision_numbers, startable

    governance.propose(store, governed, "results", channel_text("ADT"), actor="erin")
    governance.approve(store, governed, "results", 2, actor="ada")
    with store.begin() as conn:
        disable_user(conn, "ada", actor="test")
    channels = startable(store, governed)
    assert channels["results"].filter[0].equals == "ORU"  # revision 1, not the approved 2
    assert revision_numbers(store, governed, channels) == {}
    assert "revision #2 cannot run; starting it from its last deployed revision #1" in caplog.text
    assert "its approval no longer counts: ada is disabled" in caplog.text


def test_a_start_walks_back_to_the_newest_deployed_revision_that_can_run(store, governed, caplog):
    """#3 may not run (its approver was disabled) and #2, deployed before it, cannot (its
    mapping code is gone from disk): the channel starts from #1, not left out, and the log
    says why #3 and #2 were passed over."""
    from router.auth.users import disable_user
    from router.governance.deploy import revision_numbers, startable

    extra = governed.mappings / "extra.py"
    extra.write_text("def same(message):\n    return message.raw\n")
    governance.propose(
        store, governed, "results", channel_text("ADT") + "transform: extra:same\n", actor="erin"
    )
    governance.approve(store, governed, "results", 2, actor="bob")
    assert mark_deployed(store, "results", 2, actor="test")
    extra.unlink()
    governance.propose(store, governed, "results", channel_text("ORM"), actor="erin")
    governance.approve(store, governed, "results", 3, actor="ada")
    with store.begin() as conn:
        disable_user(conn, "ada", actor="test")

    left_out: dict[str, str] = {}
    channels = startable(store, governed, left_out)
    assert left_out == {}
    assert channels["results"].filter[0].equals == "ORU"  # revision 1
    assert revision_numbers(store, governed, channels) == {}
    assert "revision #3 cannot run; starting it from its last deployed revision #1" in caplog.text
    assert "its approval no longer counts: ada is disabled" in caplog.text
    assert "passed over revision #2: the mapping code approved with it" in caplog.text


def test_a_start_that_falls_back_or_leaves_a_channel_out_is_audited(store, governed):
    """Not only the log of one node: the audit log says, by the engine, which revision a
    start ran instead of the newest, or that it ran none, and why."""
    from router.governance.deploy import startable

    extra = governed.mappings / "extra.py"
    extra.write_text("def same(message):\n    return message.raw\n")
    governance.propose(
        store, governed, "results", channel_text("ADT") + "transform: extra:same\n", actor="erin"
    )
    governance.approve(store, governed, "results", 2, actor="bob")
    assert mark_deployed(store, "results", 2, actor="test")
    extra.write_text("def same(message):\n    return b'not approved'\n")

    startable(store, governed)
    with store.read() as conn:
        (event,) = audit.events(conn, audit.EventFilter(action="revision.fallback"))
    assert (event["actor"], event["target"]) == ("engine@test-node", "channel:results")
    assert (event["details"]["number"], event["details"]["running"]) == (2, 1)
    assert event["details"]["reason"].startswith("revision #2 cannot run: its mapping code")

    with store.begin() as conn:  # revision 1 predates kept code: give it code not on disk
        conn.execute(
            channel_revisions.update()
            .where(channel_revisions.c.number == 1)
            .values(mappings_sha256="0" * 64)
        )
    startable(store, governed)
    with store.read() as conn:
        (event,) = audit.events(conn, audit.EventFilter(action="revision.left-out"))
    assert (event["actor"], event["details"]["number"]) == ("engine@test-node", 2)
    assert "passed over revision #1: " in event["details"]["reason"]
