"""One node at a time: scheduled work that every node runs but only one should do at once.

On PostgreSQL, a session advisory lock named after the work (DESIGN.md §9); the node that
does not get it skips this turn. SQLite has one engine, which is always the leader.

Advisory locks are the database's, not a schema's. Work on something outside the store (a
MESH mailbox, a folder) is locked by its name alone: two stores polling one mailbox still
take turns. Work on the store's own rows (retention) is locked per store (``own``, by the
schema too), or two stores in one database (two deployments, tests side by side) would
hold each other up.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from router.store.database import Store

_OWN_KEY = text("SELECT hashtextextended(current_schema() || '/' || :work, 0)")


@contextmanager
def leader(store: Store, work: str, *, own: bool = False) -> Iterator[bool]:
    """Whether this node holds ``work``'s lock, held until the block ends; ``own``: work on
    this store's rows only, locked per store."""
    if store.dialect != "postgresql":
        yield True
        return
    with store.writer.connect() as conn:
        key = conn.scalar(_OWN_KEY, {"work": work}) if own else zlib.crc32(work.encode())
        got = conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
