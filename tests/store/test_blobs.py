"""The blob store: large payloads as content-addressed files, read and written by streaming."""

from __future__ import annotations

import hashlib
import os

import pytest
from sqlalchemy import select
from tie_testing import RunningEngine, channel, engine_config, wait_until

from router.api.messages import jsonable
from router.config import load_engine
from router.payload import Payload
from router.store.blobs import BlobStore
from router.store.database import Store
from router.store.inbound import Inbound
from router.store.opening import open_store
from router.store.queries import PREVIEW, message_detail
from router.store.schema import deliveries, messages

KIB = 1024


def test_small_payloads_stay_inline_and_large_ones_become_files(tmp_path):
    blobs = BlobStore(tmp_path / "blobs", threshold=4 * KIB)
    small = blobs.put(b"x" * (4 * KIB))
    assert not small.is_blob and small.read() == b"x" * (4 * KIB)

    data = os.urandom(10 * KIB)
    large = blobs.put(data)
    assert large.is_blob
    assert (large.sha256, large.size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert large.path == tmp_path / "blobs" / large.sha256[:2] / large.sha256[2:4] / large.sha256
    assert large.read() == data
    assert b"".join(large.chunks(3000)) == data
    assert blobs.payload(b"", large.sha256, large.size).read() == data


def test_equal_payloads_share_one_file_and_no_temporary_is_left(tmp_path):
    blobs = BlobStore(tmp_path, threshold=KIB)
    first = blobs.write(iter([b"a" * 3000, b"b" * 3000]))
    second = blobs.write(iter([b"a" * 1000, b"a" * 2000 + b"b" * 3000]))
    assert first.path == second.path
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [first.path]


def test_a_spool_that_fails_leaves_nothing_behind(tmp_path):
    blobs = BlobStore(tmp_path, threshold=KIB)
    with pytest.raises(RuntimeError), blobs.spool() as spool:
        spool.write(b"z" * (5 * KIB))
        raise RuntimeError("the download broke off")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_spool_holds_at_most_the_threshold_in_memory(tmp_path):
    blobs = BlobStore(tmp_path, threshold=KIB)
    with blobs.spool() as spool:
        for _ in range(100):
            spool.write(b"q" * 500)
            assert len(spool._buffer) <= KIB
        payload = spool.finish()
    assert payload.is_blob and payload.size == 50_000


def _file_channel(out_dir, **extra):
    return channel(
        {
            "name": "files",
            "source": {"channel": {}},
            "destinations": {
                "out": {"file": {"directory": str(out_dir), "name": "{message_id}.bin"}}
            },
            **extra,
        }
    )


def test_a_blob_message_is_passed_on_and_written_out_by_streaming(tmp_path, store_url):
    config = engine_config(
        tmp_path, store_url, blobs={"directory": str(tmp_path / "blobs"), "threshold": "4KiB"}
    )
    out = tmp_path / "out"
    running = RunningEngine(config, {"files": _file_channel(out)})
    try:
        data = os.urandom(300 * KIB)
        payload = running.store.blobs.write([data[:100_000], data[100_000:]])
        running.engine.writer.submit_sync(
            Inbound("files", payload, content_type="application/octet-stream")
        )
        written = wait_until(lambda: list(out.glob("*.bin")))
        wait_until(lambda: _status(running.store) == "sent")
        assert written[0].read_bytes() == data
        with running.store.read() as conn:
            message = conn.execute(select(messages)).one()
            delivery = conn.execute(select(deliveries)).one()
            detail = message_detail(conn, message.id, running.store.blobs)
        assert (message.raw, message.blob_sha256, message.size) == (b"", payload.sha256, len(data))
        assert (delivery.payload, delivery.blob_sha256) == (b"", payload.sha256)
        assert detail["raw"] == data[:PREVIEW] and detail["raw_truncated"]
        assert detail["deliveries"][0]["payload"] == data[:PREVIEW]
        assert jsonable(detail)["raw_truncated"] is True
    finally:
        running.stop()


def test_a_transform_output_above_the_threshold_is_stored_as_a_blob(tmp_path, store_url):
    config = engine_config(
        tmp_path, store_url, blobs={"directory": str(tmp_path / "blobs"), "threshold": "1KiB"}
    )
    (tmp_path / "mappings" / "grow.py").write_text(
        "def big(message):\n    return message.raw * 1000\n"
    )
    out = tmp_path / "out"
    running = RunningEngine(config, {"files": _file_channel(out, transform="grow:big")})
    try:
        running.engine.writer.submit_sync(
            Inbound("files", b"0123456789", content_type="text/plain")
        )
        written = wait_until(lambda: list(out.glob("*.bin")))
        wait_until(lambda: _status(running.store) == "sent")
        assert written[0].read_bytes() == b"0123456789" * 1000
        with running.store.read() as conn:
            delivery = conn.execute(select(deliveries)).one()
        assert delivery.payload == b""
        assert delivery.blob_sha256 == hashlib.sha256(b"0123456789" * 1000).hexdigest()
        assert delivery.blob_size == 10_000
    finally:
        running.stop()


def test_a_store_keeps_blobs_beside_its_sqlite_file(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db' / 'tie.db'}")
    try:
        assert store.blobs.root == tmp_path / "db" / "blobs"
    finally:
        store.dispose()


def test_payload_reads_inline_and_blob_alike(tmp_path):
    blob = BlobStore(tmp_path, threshold=1).put(b"hello world")
    for payload in (Payload(b"hello world"), blob):
        assert payload.read() == b"hello world"
        assert payload.head(5) == b"hello"
        with payload.open() as stream:
            assert stream.read() == b"hello world"


def _status(store):
    with store.read() as conn:
        return conn.scalar(select(deliveries.c.status))


def test_the_default_blob_folder_of_a_postgresql_store_is_under_engine_yamls_folder(
    tmp_path, monkeypatch
):
    """Every relative path resolves against engine.yaml's folder; the blobs of a PostgreSQL
    store followed the working folder instead, so an engine started from elsewhere (a
    service manager, a cron'd ``prune``) found none of the payloads it had stored."""
    conf, elsewhere = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    elsewhere.mkdir()
    (conf / "engine.yaml").write_text("store: postgresql+psycopg://tie@db.invalid/tie\n")
    monkeypatch.delenv("TIE_STORE", raising=False)
    monkeypatch.chdir(elsewhere)

    store = open_store(load_engine(conf / "engine.yaml"))
    try:
        assert store.blobs.root == conf / "data" / "blobs"
    finally:
        store.dispose()


def test_blobs_left_where_an_earlier_version_kept_them_are_named_on_opening(
    tmp_path, monkeypatch, caplog
):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "engine.yaml").write_text("store: postgresql+psycopg://tie@db.invalid/tie\n")
    (tmp_path / "data" / "blobs").mkdir(parents=True)
    monkeypatch.delenv("TIE_STORE", raising=False)
    monkeypatch.chdir(tmp_path)

    open_store(load_engine(conf / "engine.yaml")).dispose()
    assert f"set blobs.directory: {tmp_path / 'data' / 'blobs'}" in caplog.text

    caplog.clear()  # a SQLite store's blobs were always beside its file: nothing moved
    (conf / "engine.yaml").write_text("store: sqlite:///tie.db\n")
    open_store(load_engine(conf / "engine.yaml")).dispose()
    assert "set blobs.directory" not in caplog.text
