"""One node at a time: retention's PostgreSQL advisory lock is the store's own."""

from __future__ import annotations

from uuid import uuid4

import pytest
from sqlalchemy import create_engine, text

from router.retention import pruning_lock
from router.store.database import Store


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_one_node_of_a_store_leads_and_another_store_in_the_database_is_not_held_up(
    store_url, postgres_url
):
    schema = f"t_{uuid4().hex[:16]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    other_url = store_url.rsplit("%3D", 1)[0] + f"%3D{schema}"
    node, peer, elsewhere = Store(store_url), Store(store_url), Store(other_url)
    try:
        with pruning_lock(node) as leading:
            assert leading
            with pruning_lock(peer) as peer_leading:
                assert not peer_leading  # the same store: one node at a time
            with pruning_lock(elsewhere) as elsewhere_leading:
                assert elsewhere_leading  # another store's work is its own
        with pruning_lock(peer) as peer_leading:
            assert peer_leading
    finally:
        for store in (node, peer, elsewhere):
            store.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
