"""Migrations build exactly the schema the code declares, and the store is durable by default."""

from __future__ import annotations

from threading import Thread

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, select, text
from tie_testing import wait_until

from router.store.database import Store
from router.store.inbound import Inbound
from router.store.ingest import GroupCommitWriter
from router.store.migrate import _LOCK_KEY, SchemaTooNew, alembic_config, upgrade
from router.store.schema import SQLITE_ONLY_INDEXES, messages, metadata


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


def test_upgrade_on_an_empty_database_yields_the_declared_schema(store_url):
    store = Store(store_url)
    try:
        with store.read() as conn:
            assert inspect(conn).get_table_names() == []
        applied = upgrade(store)
        with store.writer.connect() as conn:
            assert _differences(conn) == []
            tables = set(inspect(conn).get_table_names())
            assert set(metadata.tables) <= tables
            assert _revision(conn) == _head(store_url)
        script = ScriptDirectory.from_config(alembic_config(store_url))
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


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_node_waiting_for_another_nodes_migration_says_so(store, caplog):
    """Nodes sharing PostgreSQL migrate one at a time; the one that waits logs why, then
    goes on once the lock is free (without the line, ``db upgrade`` looked hung)."""
    other = Store(store.url)
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
        assert done == [[]]  # the store was up to date: nothing to apply once it went on
    finally:
        other.dispose()
