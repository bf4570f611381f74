"""The group-commit writer's thread dies (a bug, not an outage) while senders wait for their
commits: each is refused at once as when the store cannot commit (MLLP AE or CE, never AA;
HTTP 503 with an OperationOutcome), and so is everyone after, until the engine restarts."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
from hl7.client import MLLPClient
from sqlalchemy import func, select
from tie_testing import RunningEngine, channel, engine_config, hl7_message

from router.store.ingest import GroupCommitWriter
from router.store.schema import messages

GHH = "ORU_R01_v24_python-hl7_GHH"
PROMPT = 10.0  # seconds: a refusal comes at once; without one the test fails, not hangs
FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def engine(tmp_path: Path, store_url: str) -> Iterator[RunningEngine]:
    channels = {
        "inbound": channel(
            {"name": "inbound", "source": {"mllp": {"port": 0}}, "destinations": {}}
        ),
        # Taking anyone: the writer, not who sends, is what is under test.
        "inbox": channel(
            {"name": "inbox", "source": {"http": {"auth": "none"}}, "destinations": {}}
        ),
    }
    running = RunningEngine(engine_config(tmp_path, store_url), channels, http=True)
    yield running
    running.stop()


def die_once_holding(writer: GroupCommitWriter, expected: int) -> None:
    """Make the writer's loop (not a commit) fail once it has taken ``expected`` messages:
    it waits for them to be submitted after taking the first entry, takes what is queued,
    and raises."""
    submitted = threading.Semaphore(0)
    decide, drain = writer._decide, writer._drain

    def counted(item: Any) -> None:
        decide(item)
        submitted.release()

    def dying(batch: list[Any], *first: Any) -> bool:
        for _ in range(expected):
            assert submitted.acquire(timeout=PROMPT), "the senders never submitted"
        drain(batch, *first)
        raise RuntimeError("injected: the writer's loop fails")

    writer._decide = counted  # type: ignore[method-assign]
    writer._drain = dying  # type: ignore[method-assign]


def mllp_answer(port: int, message: bytes) -> tuple[str, str, bool]:
    """MSA-1, MSA-2 and whether an ERR segment came, as python-hl7's client receives them."""
    with MLLPClient("127.0.0.1", port) as sender:
        sender.socket.settimeout(PROMPT)
        framed = sender.send_message(message)
    answer = hl7.parse(framed[1:-2].decode())
    segments = [str(s[0]) for s in answer]
    return str(answer.segment("MSA")[1]), str(answer.segment("MSA")[2]), "ERR" in segments


def fhir_answer(base: str, document: dict[str, Any]) -> tuple[int, list[str]]:
    """The status and the OperationOutcome's issue codes."""
    body = json.dumps(document)
    response = httpx.post(
        f"{base}/fhir/inbox/$process-message", content=body, headers=FHIR, timeout=PROMPT
    )
    return response.status_code, [i["code"] for i in response.json()["issue"]]


def test_senders_waiting_on_a_writer_that_dies_are_refused_at_once(
    engine, hl7_samples, bars_samples, caplog
):
    port, base = engine.port("inbound"), f"http://127.0.0.1:{engine.http_port}"
    sample, document = hl7_samples[GHH], bars_samples["servicerequest-request_validation"]
    waiting: list[Callable[[], Any]] = [
        lambda: mllp_answer(port, hl7_message(sample, "WAIT-0")),
        lambda: mllp_answer(port, hl7_message(sample, "WAIT-1")),
        lambda: mllp_answer(port, hl7_message(sample, "WAIT-AL", accept_ack="AL")),
        lambda: fhir_answer(base, document),
    ]
    die_once_holding(engine.engine.writer, expected=len(waiting))
    with ThreadPoolExecutor(len(waiting)) as pool:
        answers = [f.result(timeout=2 * PROMPT) for f in [pool.submit(w) for w in waiting]]
    assert answers == [
        ("AE", "WAIT-0", True),
        ("AE", "WAIT-1", True),
        ("CE", "WAIT-AL", True),
        (503, ["transient"]),
    ]

    # Later senders are refused at once too; /health says why.
    assert mllp_answer(port, hl7_message(sample, "LATER")) == ("AE", "LATER", True)
    for _ in range(3):
        assert fhir_answer(base, document) == (503, ["transient"])
    # One line for the channel, not one a refused request (the repeats are counted).
    [refusal] = [r.getMessage() for r in caplog.records if r.name == "router.fhir.intake"]
    assert refusal.startswith("channel inbox: answering 503 to 127.0.0.1:")
    health = httpx.get(f"{base}/health", timeout=PROMPT)
    assert (health.status_code, health.json()["writer"]) == (503, False)
    with engine.store.read() as conn:
        assert conn.scalar(select(func.count()).select_from(messages)) == 0
