"""Migrations build exactly the schema the code declares, and the store is durable by default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from threading import Thread
from uuid import uuid4

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, inspect, select, text
from tie_testing import wait_until

from router import audit
from router.store.database import Store
from router.store.deliveries import claim, release_owned
from router.store.inbound import Inbound
from router.store.ingest import GroupCommitWriter
from router.store.migrate import _LOCK_KEY, SchemaTooNew, alembic_config, upgrade
from router.store.schema import (
    SQLITE_ONLY_INDEXES,
    attempts,
    audit_events,
    deliveries,
    messages,
    metadata,
    users,
)


def _differences(conn: Connection) -> list[object]:
    def declared_here(obj: object, name: str | None, type_: str, *_: object) -> bool:
        sqlite_only = type_ == "index" and name in SQLITE_ONLY_INDEXES
        return conn.dialect.name == "sqlite" or not sqlite_only

    opts = {"compare_type": True, "include_object": declared_here}
    return compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)


def _revision(conn: Connection) -> set[str]:
    """Every branch's current revision (features add migration branches off the initial one)."""
    return set(MigrationContext.configure(conn).get_current_heads())


def _head(url: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def test_upgrade_on_an_empty_database_yields_the_declared_schema(empty_store_url):
    store = Store(empty_store_url)
    try:
        with store.read() as conn:
            assert inspect(conn).get_table_names() == []
        applied = upgrade(store)
        with store.writer.connect() as conn:
            assert _differences(conn) == []
            tables = set(inspect(conn).get_table_names())
            assert set(metadata.tables) <= tables
            assert _revision(conn) == _head(empty_store_url)
        script = ScriptDirectory.from_config(alembic_config(empty_store_url))
        assert {a.revision for a in applied} == {s.revision for s in script.walk_revisions()}
        assert applied[0] == ("0001", "initial schema")
    finally:
        store.dispose()


def test_upgrade_is_idempotent_and_keeps_data(store):
    writer = GroupCommitWriter(store)
    writer.start()
    try:
        kept = writer.submit_sync(Inbound("idempotent", b"MSH|^~\\&|A|B\r"))
    finally:
        writer.stop()

    assert upgrade(store) == []
    assert upgrade(store) == []

    with store.writer.connect() as conn:
        assert _differences(conn) == []
        assert _revision(conn) == _head(store.url)
        assert conn.scalars(select(messages.c.uuid)).all() == [kept.uuid]


def test_a_store_migrated_by_a_newer_tie_is_refused_and_left_unchanged(store):
    """A downgrade, or an older node starting on a store a newer node has migrated: alembic
    only knew it could not locate the revision; the store must be refused, not touched."""
    newest = sorted(_head(store.url))[0]
    with store.writer.begin() as conn:
        conn.execute(
            text("UPDATE alembic_version SET version_num = 'future_0001' WHERE version_num = :v"),
            {"v": newest},
        )
        conn.execute(text("CREATE TABLE future_things (id INTEGER PRIMARY KEY)"))
    expected = (_head(store.url) - {newest}) | {"future_0001"}

    with pytest.raises(SchemaTooNew, match="future_0001") as refused:
        upgrade(store)

    assert "newer than this version of tie" in str(refused.value)
    with store.writer.connect() as conn:
        assert _revision(conn) == expected
        assert "future_things" in inspect(conn).get_table_names()

    # The lock is free again: once that newer version is gone, another node migrates.
    with store.writer.begin() as conn:
        conn.execute(
            text("UPDATE alembic_version SET version_num = :v WHERE version_num = 'future_0001'"),
            {"v": newest},
        )
    other = Store(store.url)
    try:
        upgrade(other)
    finally:
        other.dispose()


def test_commits_are_durable_by_default(store):
    """SQLite: WAL with synchronous=FULL on every connection; PostgreSQL: synchronous commit."""
    for engine in (store.writer, store.reader):
        with engine.connect() as conn:
            if store.dialect == "sqlite":
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
            else:
                assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
                assert conn.execute(text("SHOW fsync")).scalar() == "on"


@pytest.mark.parametrize("empty_store_url", ["postgresql"], indirect=True)
def test_a_node_waiting_for_another_nodes_migration_says_so(empty_store_url, caplog):
    """Nodes sharing PostgreSQL migrate one at a time; the one that waits logs why, then
    goes on once the lock is free (without the line, ``db upgrade`` looked hung)."""
    store, other = Store(empty_store_url), Store(empty_store_url)
    caplog.set_level("INFO", logger="router.store.migrate")
    done: list[object] = []
    try:
        with other.writer.connect() as other_node:
            other_node.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            waiter = Thread(target=lambda: done.append(upgrade(store)), daemon=True)
            waiter.start()
            wait_until(lambda: "waiting for another node to finish migrating" in caplog.text)
            assert done == []
            other_node.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
        waiter.join(timeout=60)
        assert not waiter.is_alive()
        assert [a.revision for a in done[0]][:1] == ["0001"]  # it migrated once it went on
    finally:
        store.dispose()
        other.dispose()


def test_a_store_at_every_head_is_not_migrated_again_nor_waits_for_the_lock(store, caplog):
    """A CLI command or an engine start on an up-to-date store reads the version table and
    goes on: it neither waits behind another node's migration nor runs alembic."""
    caplog.set_level("INFO", logger="router.store.migrate")
    other = Store(store.url)
    try:
        with other.writer.connect() as other_node:
            if store.dialect == "postgresql":
                other_node.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
            done: list[object] = []
            checker = Thread(target=lambda: done.append(upgrade(store)), daemon=True)
            checker.start()
            checker.join(timeout=30)
            assert done == [[]]
    finally:
        other.dispose()
    assert "waiting for another node" not in caplog.text


def test_a_store_the_first_version_wrote_keeps_every_row_and_its_meaning(empty_store_url):
    """An engine run for months on the first schema (0001), stopped by kill -9, then started
    on this version: every row survives with its status, the failure already resent becomes
    ``resent`` (replay_0001), the columns added since are NULL, the dead node's lease is
    released and the delivery claimed again, and the audit chain still verifies."""
    store = Store(empty_store_url)
    try:
        upgrade(store, "0001")
        now = datetime.now(UTC)
        past = now - timedelta(days=90)

        def message(conn: Connection, status: str) -> int:
            values = dict(
                uuid=str(uuid4()),
                channel="adt",
                received_at=past,
                status=status,
                content_type="hl7v2",
                control_id=status,
                size=3,
                raw=b"MSH",
            )
            return conn.execute(
                insert(messages).values(values).returning(messages.c.id)
            ).scalar_one()

        def delivery(conn: Connection, message_id: int, status: str, **more: object) -> int:
            values = {
                "message_id": message_id,
                "channel": "adt",
                "destination": "lab",
                "status": status,
                "content_type": "hl7v2",
                "payload": b"MSH",
                "attempts": 1,
                "next_attempt_at": past,
                "created_at": past,
                "updated_at": past,
            } | more
            return conn.execute(
                insert(deliveries).values(values).returning(deliveries.c.id)
            ).scalar_one()

        with store.writer.begin() as conn:
            ids = {s: message(conn, s) for s in ("received", "processed", "filtered", "error")}
            done = ids["processed"]
            queued = delivery(conn, done, "queued", attempts=0)
            leased = delivery(
                conn, done, "sending", lease_owner="old-node", lease_until=now + timedelta(hours=1)
            )
            sent = delivery(conn, done, "sent")
            failed = delivery(conn, done, "failed", last_error="AR")
            copy = delivery(conn, done, "failed", resent_from=failed)
            conn.execute(
                insert(attempts).values(
                    delivery_id=failed,
                    number=1,
                    started_at=past,
                    duration_ms=1.0,
                    outcome="failed",
                    error="AR",
                )
            )
            audit.append(conn, "ops", "resend", f"urn:tie:message:{done}", {"reason": "r"})

        applied = upgrade(store)

        script = ScriptDirectory.from_config(alembic_config(store.url))
        assert {a.revision for a in applied} == {s.revision for s in script.walk_revisions()} - {
            "0001"
        }
        with store.read() as conn:
            status = dict(conn.execute(select(messages.c.id, messages.c.status)).all())
            assert status == {i: s for s, i in ids.items()}
            rows = {r.id: r for r in conn.execute(select(deliveries))}
            assert {i: rows[i].status for i in rows} == {
                queued: "queued",
                leased: "sending",
                sent: "sent",
                failed: "resent",
                copy: "failed",
            }
            assert {
                (r.address, r.hold_batch_id, r.headers, r.blob_sha256) for r in rows.values()
            } == {(None, None, None, None)}
            assert conn.scalar(select(attempts.c.error)) == "AR"
        assert audit.verify(store).ok

        assert release_owned(store, "old-node") == 1
        claimed = claim(
            store, "adt", "lab", ordered=False, lanes=1, limit=10, lease=30.0, owner="new-node"
        )
        assert {d.id for lane in claimed.lanes for d in lane} == {queued, leased}
    finally:
        store.dispose()


def test_the_last_sign_in_is_filled_from_the_audit_log_on_upgrade(empty_store_url):
    """auth_0006 moves the last sign-in onto the user: an upgrade keeps what the audit log
    said (the latest ``login`` of each user; a failed one is not a sign-in)."""
    store = Store(empty_store_url)
    try:
        upgrade(store, "auth_0005")
        past = datetime.now(UTC) - timedelta(days=3)
        with store.writer.begin() as conn:
            for name in ("ada", "sam"):
                conn.execute(
                    insert(users).values(
                        name=name, roles="viewer", created_at=past, created_by="t", updated_at=past
                    )
                )
            audit.append(conn, "sam", "login", "user:sam", {})
            audit.append(conn, "ada", "login-failed", "user:ada", {})
        with store.writer.begin() as conn:
            audit.append(conn, "sam", "login", "user:sam", {})
            latest = conn.scalar(select(audit_events.c.at).order_by(audit_events.c.id.desc()))
        upgrade(store)
        with store.read() as conn:
            rows = conn.execute(
                select(users.c.name, users.c.last_sign_in_at).order_by(users.c.name)
            )
            assert [tuple(r) for r in rows] == [("ada", None), ("sam", latest)]
    finally:
        store.dispose()
