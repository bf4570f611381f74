"""The start-up warning for channels that take only senders' tokens when no user can have one."""

from __future__ import annotations

from typing import Any

from tie_testing import channel

from router.auth.users import add_user, disable_user
from router.fhir.senders import unprovided
from router.pipeline import compile_channel
from router.store.database import Store


def _channels(*sources: dict[str, Any]) -> list[Any]:
    return [
        compile_channel(channel({"name": f"c{i}", "source": source}))
        for i, source in enumerate(sources)
    ]


def test_channels_taking_tokens_warn_until_someone_may_send(store: Store):
    guarded = _channels({"http": {}}, {"proxy": {}}, {"http": {"auth": "none"}})
    warning = unprovided(store, guarded)
    assert warning is not None
    assert warning.startswith("channel(s) c0, c1 take requests only with a sender's token")
    assert "run.py users add NAME --role sender --no-password" in warning
    assert unprovided(store, _channels({"http": {"auth": "none"}}, {"mllp": {"port": 0}})) is None
    with store.begin() as conn:
        add_user(conn, "watcher", ["viewer"], None, actor="test")
        add_user(conn, "gp-a", ["sender"], None, actor="test")
    assert unprovided(store, guarded) is None
    with store.begin() as conn:
        disable_user(conn, "gp-a", actor="test")
    assert unprovided(store, guarded) is not None
    with store.begin() as conn:
        add_user(conn, "root", ["admin"], None, actor="test")  # admin holds every role
    assert unprovided(store, guarded) is None


def test_named_senders_that_cannot_send_are_warned_of_at_start(store: Store):
    from router.fhir.senders import senders_not_ready

    named = _channels(
        {"http": {"senders": ["GP-A", "gp-b", "watcher", "gone"]}},
        {"proxy": {"senders": ["gp-a"]}},
        {"http": {}},
    )
    with store.begin() as conn:
        add_user(conn, "gp-a", ["sender"], None, actor="test")
        add_user(conn, "watcher", ["viewer"], None, actor="test")
        add_user(conn, "gone", ["sender"], None, actor="test")
        disable_user(conn, "gone", actor="test")
    assert senders_not_ready(store, named) == [
        "channel c0: sender 'gp-b' is not a user: its requests are refused 403 "
        "(run.py users list; docs/fhir.md#senders)",
        "channel c0: sender 'watcher' does not hold the sender role: its requests are refused "
        "403 (run.py users list; docs/fhir.md#senders)",
        "channel c0: sender 'gone' is disabled: its requests are refused 403 "
        "(run.py users list; docs/fhir.md#senders)",
    ]
    assert senders_not_ready(store, _channels({"http": {}})) == []
