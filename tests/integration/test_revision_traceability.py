"""Which channel revision settled a message, against a running governed engine over MLLP.

Support and auditors ask which configuration (and so which mapping code) transformed a
message: each message records the revision whose compiled pipeline decided it, before
and after an approved change and after a rollback to the same text, on the path that
decides on receipt (conditions only) and on the processor's (a mapping).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from test_governance_engine import OML, _release, channel_file, send, start
from tie_testing import Hl7Receiver, RunningEngine, hl7_message, wait_until

from router import governance
from router.cli import main
from router.store.schema import messages

MAPPING = "def same(message):\n    return message.raw\n"


@pytest.fixture
def lab() -> Iterator[Hl7Receiver]:
    receiver = Hl7Receiver()
    yield receiver
    receiver.stop()


def revisions_by_control_id(running) -> dict[str, int | None]:
    with running.store.read() as conn:
        rows = conn.execute(select(messages.c.control_id, messages.c.revision, messages.c.status))
        return {r.control_id: r.revision for r in rows if r.status != "received"}


@pytest.mark.parametrize("transform", ["", "transform: tag:same\n"], ids=["declarative", "mapping"])
def test_each_message_records_the_revision_that_settled_it(
    tmp_path, store_url, lab, hl7_samples, transform, capsys, monkeypatch
):
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "tag.py").write_text(MAPPING)
    first = channel_file(lab.port, "OML") + transform
    running = start(tmp_path, store_url, first)
    try:
        store, config = running.store, running.engine.config
        send(running, hl7_message(hl7_samples[OML], "REV-1"))
        wait_until(lambda: "REV-1" in revisions_by_control_id(running))

        second = channel_file(lab.port, "ORU") + transform
        governance.propose(store, config, "orders", second, actor="erin", reason="results")
        governance.approve(store, config, "orders", 2, actor="ada")
        running.engine.watcher.wake()
        wait_until(lambda: governance.get_revision(store, "orders", 2).state == "deployed")
        send(running, hl7_message(hl7_samples[OML], "REV-2"))
        wait_until(lambda: "REV-2" in revisions_by_control_id(running))

        governance.rollback(store, config, "orders", 1, actor="erin", reason="back")
        governance.approve(store, config, "orders", 3, actor="ada")
        running.engine.watcher.wake()
        wait_until(lambda: governance.get_revision(store, "orders", 3).state == "deployed")
        send(running, hl7_message(hl7_samples[OML], "REV-3"))
        wait_until(lambda: "REV-3" in revisions_by_control_id(running))

        assert revisions_by_control_id(running) == {"REV-1": 1, "REV-2": 2, "REV-3": 3}
        with store.read() as conn:
            first_id = conn.scalar(select(messages.c.id).where(messages.c.control_id == "REV-1"))
    finally:
        running.stop()
    capsys.readouterr()
    monkeypatch.setenv("TIE_STORE", store_url)
    assert main(["show", str(first_id), "--actor", "sam"]) == 0
    assert "revision      orders #1" in capsys.readouterr().out


def versioned(version: str) -> str:
    """A mapping that tags MSH-10 with its version, so the receiver shows which code ran."""
    return (
        "def same(message):\n"
        "    control_id = message.get('MSH-10').encode()\n"
        f"    return message.raw.replace(control_id, b'%s-{version}' % control_id)\n"
    )


def test_an_approved_change_of_the_mapping_code_alone_runs_without_a_restart(
    tmp_path, store_url, lab, hl7_samples, caplog
):
    (tmp_path / "mappings").mkdir()
    code = tmp_path / "mappings" / "tag.py"
    code.write_text(versioned("v1"))
    text = channel_file(lab.port, "OML") + "transform: tag:same\n"
    running = start(tmp_path, store_url, text)
    try:
        store, config = running.store, running.engine.config
        send(running, hl7_message(hl7_samples[OML], "M1"))
        wait_until(lambda: lab.control_ids() == ["M1-v1"])

        code.write_text(versioned("v2"))  # edited on disk, not approved: v1 keeps running
        running.engine.watcher.wake()
        wait_until(lambda: "a restart would not start the channel on it" in caplog.text)
        send(running, hl7_message(hl7_samples[OML], "M2"))
        wait_until(lambda: lab.control_ids() == ["M1-v1", "M2-v1"])

        governance.propose(store, config, "orders", text, actor="erin", reason="v2 tags")
        governance.approve(store, config, "orders", 2, actor="ada")
        running.engine.watcher.wake()
        wait_until(lambda: governance.get_revision(store, "orders", 2).state == "deployed")
        send(running, hl7_message(hl7_samples[OML], "M3"))
        wait_until(lambda: lab.control_ids() == ["M1-v1", "M2-v1", "M3-v2"])
        assert revisions_by_control_id(running) == {"M1": 1, "M2": 1, "M3": 2}
    finally:
        running.stop()


def test_an_approved_revision_whose_code_changed_on_disk_since_is_not_deployed(
    tmp_path, store_url, lab, hl7_samples
):
    (tmp_path / "mappings").mkdir()
    code = tmp_path / "mappings" / "tag.py"
    code.write_text(versioned("v1"))
    text = channel_file(lab.port, "OML") + "transform: tag:same\n"
    running = start(tmp_path, store_url, text)
    store, config, watcher = running.store, running.engine.config, running.engine.watcher
    try:
        running.call(watcher.lock.acquire())  # the watcher's own rounds wait for this test
        code.write_text(versioned("v2"))
        governance.propose(store, config, "orders", text, actor="erin")
        governance.approve(store, config, "orders", 2, actor="ada")
        code.write_text(versioned("v3"))  # after the approval, before the deploy
        running.call(watcher.check())
        running.call(_release(watcher.lock))

        failed = governance.get_revision(store, "orders", 2)
        assert failed.state == "deploy-failed"
        assert "is not the code approved with it" in failed.reason
        send(running, hl7_message(hl7_samples[OML], "D1"))
        wait_until(lambda: lab.control_ids() == ["D1-v1"])  # revision 1 and its code run on
        assert revisions_by_control_id(running) == {"D1": 1}
    finally:
        running.stop()


def test_a_restart_with_unapproved_code_on_disk_runs_only_approved_code(
    tmp_path, store_url, lab, hl7_samples, caplog
):
    """Governed, the engine runs only approved code: restarted with mapping code on disk
    that no revision of the channel approved, it leaves that channel out with an error
    saying why, rather than import that code; the approved code restored, it starts it."""
    (tmp_path / "mappings").mkdir()
    code = tmp_path / "mappings" / "tag.py"
    code.write_text(versioned("v1"))
    text = channel_file(lab.port, "OML") + "transform: tag:same\n"
    running = start(tmp_path, store_url, text)
    config = running.engine.config
    try:
        code.write_text(versioned("v2"))
        governance.propose(running.store, config, "orders", text, actor="erin")
        governance.approve(running.store, config, "orders", 2, actor="ada")
        running.engine.watcher.wake()
        wait_until(lambda: governance.get_revision(running.store, "orders", 2).state == "deployed")
    finally:
        running.stop()
    code.write_text(versioned("v3"))  # edited while the engine was stopped, not approved

    running = RunningEngine(config, None)  # type: ignore[arg-type]
    try:
        assert "orders" not in running.engine.channels
        assert "channel orders: revision #2 cannot run; the channel is left out" in caplog.text
        assert "is not the code approved with it" in caplog.text
        code.write_text(versioned("v2"))  # the approved code, restored from git
        running.engine.watcher.wake()
        # The reloader runs the channel, then starts its listener: wait for the listener.
        wait_until(lambda: any(x.channel.name == "orders" for x in running.engine.listeners))
        send(running, hl7_message(hl7_samples[OML], "R1"))
        wait_until(lambda: lab.control_ids() == ["R1-v2"])
        assert revisions_by_control_id(running) == {"R1": 2}
    finally:
        running.stop()
