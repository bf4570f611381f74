"""A FHIR message is committed ``validating`` while its models are validated in a worker
process; once validated it is routed, refused it is kept as one error with the reason, and
one left validating by a stop is checked again and released."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tie_testing import (
    HttpReceiver,
    RunningEngine,
    as_sender,
    channel,
    engine_config,
    engine_over_http,
    serving,
    wait_until,
)

from router.store.inbound import VALIDATING, Inbound, utcnow, write_inbound
from router.store.schema import messages

FHIR = {"Content-Type": "application/fhir+json"}
PATH = "/fhir/inbox/$process-message"


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    answer = (200, b"{}", {"Content-Type": "application/fhir+json"})
    with serving(HttpReceiver(lambda r: answer)) as rx:
        yield rx


@pytest.fixture
def engine(
    tmp_path: Path, store_url: str, receiver: HttpReceiver
) -> Iterator[tuple[RunningEngine, httpx.Client]]:
    inbox = channel(
        {
            "name": "inbox",
            "source": {"http": {}},
            "destinations": {"rx": {"http": {"url": receiver.url, "path": "$process-message"}}},
        }
    )
    with engine_over_http(engine_config(tmp_path, store_url), {"inbox": inbox}) as tie:
        as_sender(tie[0].store, tie[1])
        yield tie


def _rows(running: RunningEngine) -> list[Any]:
    with running.store.read() as conn:
        return list(conn.execute(select(messages).order_by(messages.c.id)))


def _invalid(bars_samples: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(bars_samples["servicerequest-request_validation"])
    document["entry"][1]["resource"].pop("intent")
    return document


def test_a_valid_message_is_routed_and_an_invalid_one_kept_once_as_an_error(
    engine, receiver, bars_samples
):
    running, client = engine
    valid = bars_samples["servicerequest-request_validation"]
    assert client.post(PATH, content=json.dumps(valid), headers=FHIR).status_code == 202
    refused = client.post(PATH, content=json.dumps(_invalid(bars_samples)), headers=FHIR)
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.intent"]

    wait_until(lambda: len(receiver.received) == 1)
    assert receiver.received[0].json()["id"] == valid["id"]
    wait_until(lambda: _rows(running)[0].status == "processed")
    first, second = _rows(running)
    assert first.control_id == valid["id"]
    assert (second.status, second.processed_at is not None) == ("error", True)
    assert second.error.startswith("rejected (400): Bundle.entry[1].resource.intent")


def _left_validating(running: RunningEngine, channel_name: str, document: Any) -> str:
    """A message as a stop leaves it: committed validating, a while ago."""
    item = Inbound(
        channel_name,
        json.dumps(document).encode(),
        content_type="fhir+json",
        source={"protocol": "http", "path": f"/fhir/{channel_name}/$process-message"},
        status=VALIDATING,
        received_at=utcnow() - timedelta(minutes=5),
    )
    with running.store.begin() as conn:
        write_inbound(conn, [item])
    return item.uuid


def test_messages_left_validating_are_checked_again_and_released(engine, receiver, bars_samples):
    running, _ = engine
    valid = _left_validating(running, "inbox", bars_samples["servicerequest-request_validation"])
    invalid = _left_validating(running, "inbox", _invalid(bars_samples))
    orphan = _left_validating(running, "gone", bars_samples["servicerequest-request_validation"])
    fresh = Inbound("inbox", b"{}", content_type="fhir+json", status=VALIDATING)
    with running.store.begin() as conn:
        write_inbound(conn, [fresh])

    assert running.call(running.engine.gateway.recover_validating()) == 3

    rows = {r.uuid: r for r in _rows(running)}
    assert rows[invalid].status == "error"
    assert rows[invalid].error.startswith("rejected (400): Bundle.entry[1].resource.intent")
    assert rows[orphan].status == "error"
    assert "channel gone no longer takes FHIR messages" in rows[orphan].error
    assert rows[fresh.uuid].status == VALIDATING  # still within the grace of a validation
    wait_until(lambda: len(receiver.received) == 1)
    assert (
        receiver.received[0].json()["id"] == bars_samples["servicerequest-request_validation"]["id"]
    )
    wait_until(lambda: {r.uuid: r for r in _rows(running)}[valid].status == "processed")
    assert running.call(running.engine.gateway.recover_validating()) == 0


def test_without_a_validation_worker_a_message_waits_for_the_next_pass(engine, bars_samples):
    running, _ = engine
    waiting = _left_validating(running, "inbox", bars_samples["servicerequest-request_validation"])
    running.call(running.engine.gateway.validators.stop())

    assert running.call(running.engine.gateway.recover_validating()) == 0
    assert {r.uuid: r.status for r in _rows(running)}[waiting] == VALIDATING
