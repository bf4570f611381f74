"""Four-eyes governance against a running engine, over real MLLP (python-hl7 on both sides).

Governed mode: a proposed change does nothing until another user approves it, then the
engine runs it without a restart. A held destination sends nothing until enough distinct
approvers release the batch.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7.client import MLLPClient
from sqlalchemy import select
from tie_testing import Hl7Receiver, RunningEngine, engine_config, hl7_message, wait_until

from router import governance
from router.auth.users import add_user
from router.config import ConfigError
from router.engine import open_store
from router.governance.deploy import mark_deployed, record_reload, running_texts
from router.store.schema import audit_events, deliveries, messages

OML = "OML_O21_nhs_nwgmsa_v251"


def channel_file(receiver_port: int, kind: str, hold: str = "") -> str:
    return (
        "name: orders\nsource:\n  mllp: {host: 127.0.0.1, port: 0}\n"
        f"filter:\n  - field: MSH-9.1\n    equals: {kind}\n"
        f"destinations:\n  lab:\n    mllp: {{host: 127.0.0.1, port: {receiver_port}}}\n"
        "    retry: {max_attempts: 100, backoff: [100ms, 100ms]}\n" + hold
    )


@pytest.fixture
def lab() -> Iterator[Hl7Receiver]:
    receiver = Hl7Receiver()
    yield receiver
    receiver.stop()


def start(tmp_path: Path, store_url: str, text: str) -> RunningEngine:
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    (config.channels / "orders.yaml").write_text(text)
    running = RunningEngine(config, None)  # type: ignore[arg-type]
    with running.store.begin() as conn:
        for name, roles in (
            ("erin", ["engineer", "approver"]),
            ("ada", ["approver"]),
            ("bob", ["approver"]),
        ):
            add_user(conn, name, roles, None, actor="test")
        add_user(conn, "sam", ["support"], None, actor="test")
    return running


def send(running: RunningEngine, raw: bytes) -> str:
    with MLLPClient("127.0.0.1", running.port("orders")) as client:
        return str(client.send_message(raw))


def statuses(running: RunningEngine, table) -> list[str]:
    with running.store.read() as conn:
        return list(conn.scalars(select(table.c.status).order_by(table.c.id)))


def test_a_change_runs_only_after_another_user_approves_it(tmp_path, store_url, lab, hl7_samples):
    running = start(tmp_path, store_url, channel_file(lab.port, "OML"))
    try:
        store, config = running.store, running.engine.config
        governance.propose(
            store, config, "orders", channel_file(lab.port, "ORU"), actor="erin", reason="results"
        )
        assert "MSA|CA|" in send(running, hl7_message(hl7_samples[OML], "BEFORE-1"))
        wait_until(lambda: lab.control_ids() == ["BEFORE-1"])  # the approved filter still runs

        with pytest.raises(governance.FourEyesViolation):
            governance.approve(store, config, "orders", 2, actor="erin")
        governance.approve(store, config, "orders", 2, actor="ada")
        running.engine.watcher.wake()
        wait_until(lambda: governance.get_revision(store, "orders", 2).state == "deployed")

        assert "MSA|CA|" in send(running, hl7_message(hl7_samples[OML], "AFTER-1"))
        wait_until(lambda: statuses(running, messages) == ["processed", "filtered"])
        assert lab.control_ids() == ["BEFORE-1"]
        assert running.port("orders") == running.engine.listeners[0].port  # no restart
    finally:
        running.stop()


def test_a_held_batch_is_sent_after_the_second_distinct_approval(
    tmp_path, store_url, lab, hl7_samples
):
    hold = "    hold: {approvals: 2}\n"
    running = start(tmp_path, store_url, channel_file(lab.port, "OML", hold))
    try:
        store = running.store
        for i in range(3):
            send(running, hl7_message(hl7_samples[OML], f"HELD-{i}"))
        wait_until(lambda: statuses(running, deliveries) == ["held"] * 3)
        channels = {n: c.config for n, c in running.engine.channels.items()}
        batch = governance.request_release(store, channels, "orders", "lab", actor="sam")
        summary = governance.batch_summary(store, batch.id)
        assert summary.by_destination == {"lab": 3}
        assert summary.by_message_type == {"OML^O21": 3}

        assert governance.approve_batch(store, batch.id, actor="ada").state == "pending"
        running.engine.dispatcher.notify({("orders", "lab")})
        assert statuses(running, deliveries) == ["held"] * 3
        assert lab.received == []

        assert governance.approve_batch(store, batch.id, actor="bob").state == "released"
        wait_until(lambda: sorted(lab.control_ids()) == ["HELD-0", "HELD-1", "HELD-2"])
        wait_until(lambda: statuses(running, deliveries) == ["sent"] * 3)
    finally:
        running.stop()


def open_mode_engine(
    tmp_path: Path, store_url: str, lab: Hl7Receiver
) -> tuple[RunningEngine, Path]:
    """An engine started from its channel file (open mode): an ``orders`` channel taking
    ORU to ``lab``; the engine and that file."""
    config = engine_config(tmp_path, store_url)
    config.channels.mkdir()
    path = config.channels / "orders.yaml"
    path.write_text(channel_file(lab.port, "ORU"))
    return RunningEngine(config, None), path  # type: ignore[arg-type]


def test_a_reload_reports_its_change_even_while_the_watcher_checks_constantly(
    tmp_path, store_url, lab
):
    """The revision watcher's own check must not apply (and so take from the reload's
    report) a change between the reload recording the files and checking them."""
    running, path = open_mode_engine(tmp_path, store_url, lab)
    try:
        running.engine.watcher.interval = 0.0005
        running.engine.watcher.wake()  # its next wait is the short one
        for kind in ("OML", "ADT", "ORM", "SIU", "ORU"):
            path.write_text(channel_file(lab.port, kind))
            assert running.call(running.engine.reload("olly")).changed == ["orders"], kind
    finally:
        running.stop()


def test_open_mode_reload_deploys_a_changed_file_without_a_restart(
    tmp_path, store_url, lab, hl7_samples
):
    running, path = open_mode_engine(tmp_path, store_url, lab)
    try:
        port = running.port("orders")
        send(running, hl7_message(hl7_samples[OML], "FILTERED-1"))
        wait_until(lambda: statuses(running, messages) == ["filtered"])
        path.write_text(channel_file(lab.port, "OML"))
        result = running._loop.run(running.engine.reload("olly"))
        assert result.changed == ["orders"]
        send(running, hl7_message(hl7_samples[OML], "SENT-1"))
        wait_until(lambda: lab.control_ids() == ["SENT-1"])
        assert running.port("orders") == port
        [latest, *_] = governance.list_revisions(running.store, "orders")
        assert (latest.author, latest.state) == ("olly", "deployed")
    finally:
        running.stop()


def test_an_open_mode_reload_refuses_a_file_that_cannot_run(tmp_path, store_url, lab):
    """A file naming a mapping that does not load passes the file checks but cannot be
    compiled: the reload says so, and no revision claims it was deployed."""
    running, path = open_mode_engine(tmp_path, store_url, lab)
    try:
        path.write_text(
            channel_file(lab.port, "OML").replace("filter:", "transform: nosuch:f\nfilter:")
        )
        with pytest.raises(ConfigError, match="nosuch"):
            running.call(running.engine.reload("olly"))
        assert [(r.number, r.state) for r in governance.list_revisions(running.store)] == [
            (1, "deployed")
        ]
        assert running.engine.channels["orders"].config.filter[0].equals == "ORU"
        path.write_text(channel_file(lab.port, "OML"))
        assert running.call(running.engine.reload("olly")).changed == ["orders"]
    finally:
        running.stop()


def test_a_reload_to_a_port_in_use_keeps_the_channel_listening(
    tmp_path, store_url, lab, hl7_samples
):
    """A new port that another program holds must not leave the channel refusing every
    connection while ``/health`` says all is well: it goes on listening as before."""
    running, path = open_mode_engine(tmp_path, store_url, lab)
    try:
        taken = channel_file(lab.port, "OML").replace("port: 0}", f"port: {lab.port}}}", 1)
        path.write_text(taken)
        assert running.call(running.engine.reload("olly")).changed == ["orders"]
        assert running.engine.listening
        assert "MSA|CA|" in send(running, hl7_message(hl7_samples[OML], "STILL-1"))
        wait_until(lambda: lab.control_ids() == ["STILL-1"])
    finally:
        running.stop()


def test_a_revision_that_cannot_run_does_not_keep_the_engine_down(
    tmp_path, store_url, lab, caplog, monkeypatch
):
    """A mapping removed after its revision was approved: on the next start that channel
    runs its last deployed revision, with an error naming both, and the others start."""
    config = engine_config(tmp_path, store_url, governance="governed")
    config.channels.mkdir()
    for name, kind in (("orders", "OML"), ("results", "ORU")):
        text = channel_file(lab.port, kind).replace("name: orders", f"name: {name}")
        (config.channels / f"{name}.yaml").write_text(text)
    (config.mappings / "tidy.py").write_text("def f(message):\n    return message\n")
    RunningEngine(config, None).stop()  # the files become revision 1 of each channel
    store = open_store(config)
    with store.begin() as conn:
        add_user(conn, "erin", ["engineer"], None, actor="test")
        add_user(conn, "ada", ["approver"], None, actor="test")
    changes = {
        "orders": channel_file(lab.port, "OML").replace("filter:", "transform: tidy:f\nfilter:"),
        "results": channel_file(lab.port, "ADT").replace("name: orders", "name: results"),
    }
    for name, text in changes.items():
        governance.propose(store, config, name, text, actor="erin")
        governance.approve(store, config, name, 2, actor="ada")
    store.dispose()
    (config.mappings / "tidy.py").unlink()
    monkeypatch.delitem(sys.modules, "tie_mappings.tidy", raising=False)  # as a new process

    running = RunningEngine(config, None)
    try:
        channels = {name: c.config for name, c in running.engine.channels.items()}
        assert (channels["orders"].transform, channels["orders"].filter[0].equals) == (None, "OML")
        assert channels["results"].filter[0].equals == "ADT"
        [error] = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and r.message.startswith("channel orders")
        ]
        assert "channel orders: revision #2 cannot run" in error.message
        assert "last deployed revision #1" in error.message
        assert "tidy" in error.message
    finally:
        running.stop()


async def _release(lock: asyncio.Lock) -> None:
    lock.release()


def test_an_approved_revision_that_cannot_deploy_is_marked_so(tmp_path, store_url, lab):
    """The watcher cannot compile an approved revision (its mapping went after approval):
    it is marked deploy-failed with the reason, the channel's deployed revision counts as
    running again, and another channel approved meanwhile deploys all the same."""
    running = start(tmp_path, store_url, channel_file(lab.port, "OML"))
    store, config, watcher = running.store, running.engine.config, running.engine.watcher
    (config.mappings / "tidy.py").write_text("def f(message):\n    return message\n")
    broken = channel_file(lab.port, "ORU").replace("filter:", "transform: tidy:f\nfilter:")
    new = channel_file(lab.port, "ADT").replace("name: orders", "name: results")
    try:
        running.call(watcher.lock.acquire())  # the watcher's own rounds wait for this test
        for name, text in (("orders", broken), ("results", new)):
            number = governance.propose(store, config, name, text, actor="erin").number
            governance.approve(store, config, name, number, actor="ada")
        (config.mappings / "tidy.py").unlink()
        running.call(watcher.check())
        running.call(_release(watcher.lock))

        failed = governance.get_revision(store, "orders", 2)
        assert failed.state == "deploy-failed" and "tidy" in failed.reason
        assert governance.get_revision(store, "results", 1).state == "deployed"
        assert running_texts(store)["orders"].number == 1
        assert governance.diff(store, "orders", 2).against == 1
        assert running.engine.channels["orders"].config.transform is None
        with store.read() as conn:
            events = conn.execute(select(audit_events.c.action, audit_events.c.target)).all()
        assert ("revision.deploy-failed", "channel:orders") in events
    finally:
        running.stop()


def test_an_approval_that_lapsed_before_the_deploy_is_not_deployed(tmp_path, store_url, lab):
    """Ada approved, then was disabled before the engine deployed it: the watcher refuses
    it (deploy-failed, audited, saying why) and the channel runs on what it ran."""
    from router.auth.users import disable_user

    running = start(tmp_path, store_url, channel_file(lab.port, "OML"))
    store, config, watcher = running.store, running.engine.config, running.engine.watcher
    try:
        running.call(watcher.lock.acquire())  # the watcher's own rounds wait for this test
        governance.propose(store, config, "orders", channel_file(lab.port, "ORU"), actor="erin")
        governance.approve(store, config, "orders", 2, actor="ada")
        with store.begin() as conn:
            disable_user(conn, "ada", actor="test")
        running.call(watcher.check())
        running.call(_release(watcher.lock))

        failed = governance.get_revision(store, "orders", 2)
        assert failed.state == "deploy-failed"
        assert "its approval no longer counts: ada is disabled" in failed.reason
        assert running.engine.channels["orders"].config.filter[0].equals == "OML"
        with store.read() as conn:
            events = conn.execute(select(audit_events.c.action, audit_events.c.details)).all()
        [(_, details)] = [e for e in events if e.action == "revision.deploy-failed"]
        assert "ada is disabled" in details
    finally:
        running.stop()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # nodes share PostgreSQL
def test_open_mode_nodes_with_different_files_each_run_their_own(tmp_path, store_url, lab, caplog):
    """Open mode: the files are the truth. A second node started with other channel files
    records them in the shared store; the first node must not run them (it warns), while a
    reload of its own files still reaches it through the store."""
    nodes = {}
    for node, kind in (("a", "ORU"), ("b", "ADT")):
        folder = tmp_path / node
        folder.mkdir()
        config = engine_config(folder, store_url, node=node)
        config.channels.mkdir()
        (config.channels / "orders.yaml").write_text(channel_file(lab.port, kind))
        nodes[node] = RunningEngine(config, None)  # type: ignore[arg-type]
    a, b = nodes["a"], nodes["b"]
    try:
        assert running_texts(a.store)["orders"].yaml == channel_file(lab.port, "ADT")  # b's
        with caplog.at_level(logging.WARNING, logger="router.governance.watcher"):
            a.call(a.engine.watcher.check())
        assert a.engine.channels["orders"].config.filter[0].equals == "ORU"
        assert "channel orders: revision #2 in the store differs from " in caplog.text
        assert str(a.engine.config.channels / "orders.yaml") in caplog.text

        (a.engine.config.channels / "orders.yaml").write_text(channel_file(lab.port, "OML"))
        record_reload(a.store, a.engine.config, actor="olly")  # as `run.py reload` on a's host
        a.call(a.engine.watcher.check())
        b.call(b.engine.watcher.check())
        assert a.engine.channels["orders"].config.filter[0].equals == "OML"
        assert b.engine.channels["orders"].config.filter[0].equals == "ADT"
    finally:
        for running in nodes.values():
            running.stop()


def test_a_deployed_revision_that_cannot_compile_is_tried_once_until_its_code_changes(
    tmp_path, store_url, lab, caplog
):
    """Another node deployed revision 2, whose mapping reads a code table this node lacks:
    this node falls back to revision 1, saying so once, and does not import the broken
    mapping again on every round; once the table is back, the next round runs revision 2."""
    running = start(tmp_path, store_url, channel_file(lab.port, "OML"))
    store, config, watcher = running.store, running.engine.config, running.engine.watcher
    imports = tmp_path / "imports.log"
    table = config.mappings / "codes.csv"
    table.write_text("OML\n")
    (config.mappings / "tidy.py").write_text(
        "from pathlib import Path\n"
        f"with open({str(imports)!r}, 'a') as log:\n    log.write('import\\n')\n"
        "CODES = (Path(__file__).parent / 'codes.csv').read_text()\n"
        "def f(message):\n    return message\n"
    )
    text = channel_file(lab.port, "ORU").replace("filter:", "transform: tidy:f\nfilter:")
    try:
        running.call(watcher.lock.acquire())  # the watcher's own rounds wait for this test
        governance.propose(store, config, "orders", text, actor="erin")
        governance.approve(store, config, "orders", 2, actor="ada")
        assert mark_deployed(store, "orders", 2, actor="engine@other-node")
        table.unlink()
        imports.unlink()
        for _ in range(4):
            running.call(watcher.check())
        assert imports.read_text().count("import") == 1
        assert running.engine.channels["orders"].revision == 1
        said = [r for r in caplog.records if "revision #2 cannot run" in r.getMessage()]
        assert len(said) == 1
        with store.read() as conn:
            actions = list(conn.scalars(select(audit_events.c.action)))
        assert actions.count("revision.fallback") == 1
        running.call(running.engine.reload("sighup"))  # asked to try again: it does
        assert imports.read_text().count("import") == 2

        table.write_text("OML\nORU\n")  # the code table restored
        running.call(watcher.check())
        assert running.engine.channels["orders"].revision == 2
        running.call(_release(watcher.lock))
    finally:
        running.stop()
