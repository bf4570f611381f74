"""Store test helpers shared by the processing tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import func, select, update

from router.store.database import Store
from router.store.ingest import utcnow
from router.store.schema import channel_state


@contextmanager
def failing_delivery_insert(store: Store) -> Iterator[None]:
    """Make the INSERT into deliveries fail inside the processor's transaction: a trigger,
    so the store itself refuses the row, however the insert reaches it."""
    if store.is_sqlite:
        create = [
            "CREATE TRIGGER refuse_deliveries BEFORE INSERT ON deliveries "
            "BEGIN SELECT RAISE(ABORT, 'delivery insert refused'); END"
        ]
        drop = ["DROP TRIGGER refuse_deliveries"]
    else:
        create = [
            "CREATE FUNCTION refuse_deliveries() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'delivery insert refused'; END $$",
            "CREATE TRIGGER refuse_deliveries BEFORE INSERT ON deliveries "
            "FOR EACH ROW EXECUTE FUNCTION refuse_deliveries()",
        ]
        drop = ["DROP TRIGGER refuse_deliveries ON deliveries", "DROP FUNCTION refuse_deliveries()"]
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
