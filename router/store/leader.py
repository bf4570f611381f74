"""One node at a time: scheduled work that every node runs but only one should do at once.

On PostgreSQL, a session advisory lock named after the work (DESIGN.md §9); the node that
does not get it skips this turn. SQLite has one engine, which is always the leader.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from router.store.database import Store


@contextmanager
def leader(store: Store, work: str) -> Iterator[bool]:
    """Whether this node holds ``work``'s lock, held until the block ends."""
    if store.dialect != "postgresql":
        yield True
        return
    key = zlib.crc32(work.encode())
    with store.writer.connect() as conn:
        got = conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
