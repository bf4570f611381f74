"""Adding users at once, on SQLite and PostgreSQL: a name is taken once, whatever its case."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

from router.auth.users import add_user, list_users
from router.store.database import Store


def test_concurrent_adds_of_one_name_in_any_case_make_one_user(store: Store):
    """Each looked for the name, found none and inserted: on PostgreSQL the same name failed
    on the unique key (a 500) and names differing in case were all added, as several users."""
    names = ["nia", "nia", "Nia", "NIA", "nIa", "niA"]
    barrier = Barrier(len(names))

    def add(name: str) -> str:
        barrier.wait()
        try:
            with store.begin() as conn:
                add_user(conn, name, ["viewer"], "a long enough password", actor="test")
        except ValueError as exc:
            return str(exc)
        return "added"

    with ThreadPoolExecutor(len(names)) as pool:
        outcomes = list(pool.map(add, names))
    assert outcomes.count("added") == 1
    assert all("exists" in outcome for outcome in outcomes if outcome != "added")
    with store.read() as conn:
        assert [user["name"].lower() for user in list_users(conn)] == ["nia"]
