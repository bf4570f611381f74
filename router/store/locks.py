"""Writers of one key take turns: a transaction lock named after what they are about to add.

Reading whether a key is taken (or the highest number so far) and then inserting races a
concurrent writer of the same key on PostgreSQL: both read the same, and the second INSERT
fails on the unique key (a 500) or, where no key says so, both rows go in. Taking the lock
first makes the second wait for the first's commit and then read what it wrote. SQLite's
writers already take turns (``BEGIN IMMEDIATE``).

The lock is per store (by schema), so two deployments in one database do not wait on each
other; it is released when the transaction ends.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '/' || :key, 0))")


def hold_key(conn: Connection, key: str) -> None:
    """Until ``conn``'s transaction ends, no other transaction holds ``key`` (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK, {"key": key})
