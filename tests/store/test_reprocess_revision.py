"""A reprocessed copy is decided by the channel's revision at the time, and says so: it does
not inherit the revision that settled its original."""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select

from router.config import ChannelConfig
from router.governance.deploy import record_deployed
from router.pipeline import compile_channel
from router.processing import Processor
from router.replay import reprocess
from router.store.schema import messages

CHANNEL = ChannelConfig.model_validate(
    {"name": "orders", "source": {"mllp": {"port": 0}}, "destinations": {}}
)


def revisions(store) -> dict[int, int | None]:
    with store.read() as conn:
        return dict(conn.execute(select(messages.c.id, messages.c.revision)).all())


def test_a_copy_runs_through_the_current_revision_and_says_which(store, receive, er7):
    record_deployed(store, "orders", "first", actor="olly", reason="r")
    (original,) = receive("orders", er7("ORD1"))
    Processor(store, {"orders": replace(compile_channel(CHANNEL), revision=1)}).run_once()
    record_deployed(store, "orders", "second", actor="olly", reason="r")

    result = reprocess(store, original, reason="INC1", actor="sam")
    copy = max(revisions(store))
    assert revisions(store) == {original: 1, copy: None}  # not settled yet: no revision
    assert "through orders's running revision #2 (the original was settled by #1)" in (
        result.description
    )

    Processor(store, {"orders": replace(compile_channel(CHANNEL), revision=2)}).run_once()
    assert revisions(store) == {original: 1, copy: 2}
