"""The file source: a folder polled for files, each stored before it is removed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tie_testing import Hl7Receiver, RunningEngine, engine_config, hl7_message, wait_until

from router.config import ChannelConfig, load_channel
from router.connectors.file_source import FilePoller
from router.store.database import Store
from router.store.inbound import Inbound, Receipt, write_inbound
from router.store.schema import messages

m = messages.c
GHH = "ORU_R01_v24_python-hl7_GHH"


def drop(folder: Path, name: str, data: bytes) -> Path:
    """Put a file in ``folder`` as a careful writer does: under a dot name, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    hidden = folder / f".{name}.part"
    hidden.write_bytes(data)
    os.replace(hidden, folder / name)
    return folder / name


def stored(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(messages).order_by(m.id)))


def inbox_channel(
    tmp_path: Path,
    destinations: dict[str, Any] | None = None,
    idempotent: bool = False,
    **poll: Any,
) -> ChannelConfig:
    """A channel file polling ``<tmp>/inbox``, loaded as the engine loads it."""
    (tmp_path / "channels").mkdir(exist_ok=True)
    path = tmp_path / "channels" / "inbox.yaml"
    settings = {"directory": "../inbox", "interval": "100ms", "settle": "0s", **poll}
    channel = {"name": "inbox", "source": {"file": settings}, "destinations": destinations or {}}
    if idempotent:
        channel["idempotent"] = {"window": "7d"}
    path.write_text(json.dumps(channel))
    return load_channel(path)


def test_files_dropped_in_the_folder_are_stored_processed_delivered_and_removed(
    tmp_path, store_url, hl7_samples
):
    lab = Hl7Receiver()
    lab_destination = {"lab": {"mllp": {"host": "127.0.0.1", "port": lab.port}}}
    inbox = inbox_channel(tmp_path, lab_destination, pattern="*.hl7")
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbox": inbox})
    try:
        batch = b"\n".join(hl7_message(hl7_samples[GHH], cid) for cid in ("FILE-1", "FILE-2"))
        dropped = drop(tmp_path / "inbox", "results.hl7", b"FHS|^~\\&\r" + batch + b"\rFTS|1")
        ignored = drop(tmp_path / "inbox", "notes.txt", b"not for this channel")

        wait_until(lambda: lab.control_ids() == ["FILE-1", "FILE-2"])

        rows = stored(running.store)
        assert [(r.control_id, r.status) for r in rows] == [
            ("FILE-1", "processed"),
            ("FILE-2", "processed"),
        ]
        assert json.loads(rows[0].source)["name"] == "results.hl7"
        assert not dropped.exists()
        assert ignored.exists()
    finally:
        running.stop()
        lab.stop()


def test_a_file_that_is_not_hl7_is_stored_as_an_error_and_moved_aside(tmp_path, store_url):
    running = RunningEngine(engine_config(tmp_path, store_url), {"inbox": inbox_channel(tmp_path)})
    try:
        drop(tmp_path / "inbox", "junk.hl7", b"PID|1||123\rOBX|1|TX|||text")

        wait_until(lambda: (tmp_path / "inbox" / "error" / "junk.hl7").exists())

        (row,) = stored(running.store)
        assert row.status == "error"
        assert row.error.startswith("rejected: not HL7 v2: segment before the first MSH")
        assert row.raw == b"PID|1||123\rOBX|1|TX|||text"
    finally:
        running.stop()


def test_a_reload_that_changes_the_file_source_polls_as_it_now_says(
    tmp_path, store_url, hl7_samples
):
    inbox_channel(tmp_path, pattern="*.hl7")
    running = RunningEngine(engine_config(tmp_path, store_url), None)
    try:
        inbox_channel(tmp_path, pattern="*.txt")
        running.call(running.engine.reload("olly"))
        drop(tmp_path / "inbox", "late.txt", hl7_message(hl7_samples[GHH], "LATE"))

        wait_until(lambda: [r.control_id for r in stored(running.store)] == ["LATE"])
        assert not (tmp_path / "inbox" / "late.txt").exists()
    finally:
        running.stop()


# --- one poll at a time, straight into the store ---------------------------------------


def poller(store: Store, channel: ChannelConfig) -> FilePoller:
    def submit(item: Inbound) -> Receipt:
        with store.begin() as conn:
            return write_inbound(conn, [item])[0]

    return FilePoller(channel, store, submit)


def test_only_settled_plain_matching_files_are_taken_oldest_first(store, tmp_path, hl7_samples):
    inbox = tmp_path / "inbox"
    older = drop(inbox, "b.hl7", hl7_message(hl7_samples[GHH], "OLDER"))
    os.utime(older, (time.time() - 60, time.time() - 60))
    drop(inbox, "a.hl7", hl7_message(hl7_samples[GHH], "NEWER"))
    drop(inbox, "c.txt", hl7_message(hl7_samples[GHH], "OTHER-PATTERN"))
    (inbox / "d.hl7").symlink_to(older)
    (inbox / "sub.hl7").mkdir()
    files = poller(store, inbox_channel(tmp_path, pattern="*.hl7"))

    assert files.ready() == [inbox / "b.hl7", inbox / "a.hl7"]
    assert files.poll() == 2
    assert [r.control_id for r in stored(store)] == ["OLDER", "NEWER"]
    assert sorted(p.name for p in inbox.iterdir()) == ["c.txt", "d.hl7", "sub.hl7"]


def test_a_file_still_being_written_waits(store, tmp_path, hl7_samples):
    drop(tmp_path / "inbox", "slow.hl7", hl7_message(hl7_samples[GHH], "SLOW"))
    files = poller(store, inbox_channel(tmp_path, settle="1h"))

    assert files.poll() == 0
    assert stored(store) == []


def test_without_the_idempotent_receiver_a_file_taken_again_is_taken_again(
    store, tmp_path, hl7_samples
):
    data = hl7_message(hl7_samples[GHH], "TWICE")
    files = poller(store, inbox_channel(tmp_path))
    for _ in range(2):
        drop(tmp_path / "inbox", "twice.hl7", data)
        assert files.poll() == 1

    assert [(r.control_id, r.status) for r in stored(store)] == [("TWICE", "received")] * 2


def test_a_file_taken_again_after_a_crash_is_recognised_not_processed_twice(
    store, tmp_path, hl7_samples
):
    data = hl7_message(hl7_samples[GHH], "ONCE")
    files = poller(store, inbox_channel(tmp_path, idempotent=True))
    drop(tmp_path / "inbox", "once.hl7", data)
    assert files.poll() == 1

    drop(tmp_path / "inbox", "once.hl7", data)  # as if the engine died before removing it
    assert files.poll() == 1

    first, again = stored(store)
    assert (first.status, again.status, again.duplicate_of) == ("received", "filtered", first.id)
    assert not (tmp_path / "inbox" / "once.hl7").exists()


def test_move_to_keeps_the_file_and_other_content_is_known_by_its_hash(store, tmp_path):
    channel = inbox_channel(
        tmp_path,
        idempotent=True,
        content_type="application/json",
        move_to="../done",
        pattern="*.json",
    )
    files = poller(store, channel)
    drop(tmp_path / "inbox", "event.json", b'{"resourceType": "Bundle"}')
    drop(tmp_path / "inbox", "same.json", b'{"resourceType": "Bundle"}')

    assert files.poll() == 2

    first, same = stored(store)
    assert first.content_type == "application/json"
    assert len(first.control_id) == 64 and first.control_id == same.control_id
    assert same.duplicate_of == first.id  # the same content again: a repeat
    assert same.error.startswith(f"duplicate of {first.uuid}: sha256 '{first.control_id}' ")
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["event.json", "same.json"]


def test_a_file_over_max_size_is_refused_with_its_reason(store, tmp_path, hl7_samples):
    files = poller(store, inbox_channel(tmp_path, max_size="100B"))
    drop(tmp_path / "inbox", "big.hl7", hl7_message(hl7_samples[GHH], "BIG"))

    assert files.poll() == 1

    (row,) = stored(store)
    assert (row.status, row.raw) == ("error", b"")
    assert "over max_size (100)" in row.error
    assert (tmp_path / "inbox" / "error" / "big.hl7").exists()


@pytest.mark.parametrize(
    ("poll", "problem"),
    [
        ({"pattern": "../*.hl7"}, "no path separators"),
        ({"move_to": "../inbox"}, "source.file.move_to: is the polled folder itself"),
    ],
)
def test_a_file_source_that_could_escape_or_loop_is_a_config_error(tmp_path, poll, problem):
    with pytest.raises(Exception, match=problem.replace(".", r"\.")):
        inbox_channel(tmp_path, **poll)
