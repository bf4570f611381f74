"""Store test helpers shared by the processing tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import event, func, select, update

from router.config import ChannelConfig
from router.pipeline import CompiledChannel, compile_channel
from router.store.database import Store
from router.store.inbound import utcnow
from router.store.ingest import GroupCommitWriter, StoreUnavailable
from router.store.schema import channel_state


@contextmanager
def refused(store: Store, table: str, when: str = "true", *, on: str = "INSERT") -> Iterator[None]:
    """Make the store itself refuse ``on`` statements' rows of ``table`` where ``when`` holds
    (a condition on ``NEW``): a trigger, so the refusal reaches however the statement does.
    The error says ``<table> <on> refused`` (``deliveries insert refused``)."""
    message = f"{table} {on.lower()} refused"
    if store.is_sqlite:
        create = [
            f"CREATE TRIGGER tie_refuse BEFORE {on} ON {table} FOR EACH ROW WHEN {when} "
            f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
        ]
        drop = ["DROP TRIGGER tie_refuse"]
    else:
        create = [
            "CREATE FUNCTION tie_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$",
            f"CREATE TRIGGER tie_refuse BEFORE {on} ON {table} "
            f"FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION tie_refuse()",
        ]
        drop = [f"DROP TRIGGER tie_refuse ON {table}", "DROP FUNCTION tie_refuse()"]
    with store.begin() as conn:
        for statement in create:
            conn.exec_driver_sql(statement)
    try:
        yield
    finally:
        with store.begin() as conn:
            for statement in drop:
                conn.exec_driver_sql(statement)


def set_paused(store: Store, channel: str, paused: bool) -> None:
    """Pause or resume ``channel`` as the console would, straight in the store."""
    with store.begin() as conn:
        if conn.scalar(select(func.count()).where(channel_state.c.channel == channel)):
            conn.execute(
                update(channel_state)
                .where(channel_state.c.channel == channel)
                .values(paused=paused, updated_at=utcnow())
            )
        else:
            conn.execute(
                channel_state.insert().values(
                    channel=channel, paused=paused, updated_at=utcnow(), updated_by="test"
                )
            )


def orders_channel(name: str = "orders", **extra: Any) -> CompiledChannel:
    """A channel taking OML orders to a lab over MLLP, correlated by placer order."""
    data: dict[str, Any] = {
        "name": name,
        "source": {"mllp": {"port": 0}},
        "filter": [{"field": "MSH-9.1", "in": ["OML"]}],
        "correlate": {"placer": "ORC-2.1"},
        "destinations": {"lab": {"mllp": {"host": "127.0.0.1", "port": 2576}}},
    }
    data.update(extra)
    return compile_channel(ChannelConfig.model_validate(data))


class _WriterBug(BaseException):
    """Escapes the writer's job handling, as a bug in its loop would."""


def dead_writer(store: Store) -> GroupCommitWriter:
    """A group-commit writer whose thread has died: everything it is given from then on is
    refused with ``StoreUnavailable`` ("the writer stopped"), until a restart."""

    def bug(_conn: Any) -> None:
        raise _WriterBug

    writer = GroupCommitWriter(store)
    writer.start()
    with suppress(StoreUnavailable):
        writer.run(bug)
    assert not writer.alive
    return writer


@contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with their parameters) run through the store's reader meanwhile."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(store.reader, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.reader, "before_cursor_execute", record)
