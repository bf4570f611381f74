"""The engine lock on PostgreSQL: engines share it, a restore takes it alone."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from router.store.database import Store
from router.store.presence import StoreInUse, engine_running, held_postgres


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite: its own locks
def test_engines_share_the_store_and_a_restore_excludes_them(store_url, store):
    other = Store(store_url)
    with ExitStack() as cleanup:
        cleanup.callback(other.dispose)
        conn = cleanup.enter_context(store.writer.connect())
        with (
            engine_running(store),
            engine_running(other),  # two nodes
            pytest.raises(StoreInUse, match="2 session"),
            held_postgres(conn),
        ):
            pass
        with (
            held_postgres(conn),
            pytest.raises(StoreInUse, match="a restore of this store is running"),
            engine_running(other),
        ):
            pass
        with engine_running(other):  # the restore let go
            pass
