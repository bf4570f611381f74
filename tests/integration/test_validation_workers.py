"""FHIR validation in worker processes: real workers, real fhir.resources models."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import select
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
import uvloop

from router.fhir.outcome import Rejected
from router.fhir.validation import parse_json, validate
from router.fhir.validators import DIRECT_WRITE, ValidationWorkers, ValidatorLost

DATA = Path(__file__).resolve().parents[1] / "data"
GUARD = 60.0  # seconds: a test that hangs fails instead
T = TypeVar("T")
SAMPLE = json.loads((DATA / "bars" / "servicerequest-request_validation.json").read_text())
# An STU3 Appointment: R4 calls its ``reason`` ``reasonCode``.
APPOINTMENT = {
    "resourceType": "Appointment",
    "status": "booked",
    "participant": [{"status": "accepted"}],
    "reason": [{"text": "review"}],
}


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, GUARD))  # type: ignore[arg-type]


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


def invalid() -> dict[str, Any]:
    """The sample with an unknown element and a ServiceRequest status of the wrong type."""
    document = copy.deepcopy(SAMPLE)
    document["entry"][0]["resource"]["bogus"] = True
    request = next(
        e for e in document["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    request["resource"]["status"] = 7
    return document


def padded(entries: int) -> dict[str, Any]:
    """The sample padded with copies of its Observation."""
    document = copy.deepcopy(SAMPLE)
    observation = next(
        e for e in document["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    while len(document["entry"]) < entries:
        extra = copy.deepcopy(observation)
        extra["fullUrl"] = f"urn:uuid:{uuid4()}"
        document["entry"].append(extra)
    return document


def in_process(document: Any, version: str = "R4") -> Rejected:
    with pytest.raises(Rejected) as raised:
        validate(document, version)  # type: ignore[arg-type]
    return raised.value


def same(a: Rejected, b: Rejected) -> bool:
    return (a.status, a.issues) == (b.status, b.issues)


def exited(pid: int, timeout: float = 0.0) -> bool:
    """Whether process ``pid`` has exited (waiting up to ``timeout``); it need not be ours."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()  # not select.select: a busy test process has fds over 1024
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


async def rejection(workers: ValidationWorkers, data: bytes, version: str = "R4") -> Rejected:
    with pytest.raises(Rejected) as raised:
        await workers.validate(data, version)  # type: ignore[arg-type]
    return raised.value


@pytest.mark.parametrize("count", [1, 0])
def test_answers_as_validation_in_this_process(count: int) -> None:
    expected = in_process(invalid())
    assert expected.status == 400 and len(expected.issues) == 2
    with pytest.raises(Rejected) as bad_json:
        parse_json(b'{"resourceType": ')

    async def scenario() -> None:
        workers = ValidationWorkers(count)
        await workers.start()
        await workers.start()
        try:
            assert len(workers.pids) == count
            assert await workers.validate(body(SAMPLE), "R4") is None
            assert same(await rejection(workers, body(invalid())), expected)
            assert same(await rejection(workers, b'{"resourceType": '), bad_json.value)
            not_utf8 = await rejection(workers, b'{"resourceType": "\xff"}')
            assert not_utf8.status == 400 and "not UTF-8" in not_utf8.issues[0].diagnostics
            not_resource = await rejection(workers, b"[1, 2]")
            assert (not_resource.status, not_resource.issues[0].expression) == (400, "resourceType")
        finally:
            await workers.stop()

    run(scenario())


def test_stu3() -> None:
    broken = {**APPOINTMENT, "status": ["booked"], "bogus": 1}
    expected = in_process(broken, "STU3")

    async def scenario() -> None:
        workers = ValidationWorkers(1)
        await workers.start()
        try:
            assert await workers.validate(body(APPOINTMENT), "STU3") is None
            assert same(await rejection(workers, body(broken), "STU3"), expected)
            assert same(await rejection(workers, body(APPOINTMENT), "R4"), in_process(APPOINTMENT))
        finally:
            await workers.stop()

    run(scenario())


def test_concurrent_requests_share_two_workers() -> None:
    expected = in_process(invalid())
    bodies = [body(SAMPLE) if i % 3 else body(invalid()) for i in range(21)]

    async def one(data: bytes) -> Rejected | None:
        try:
            await workers.validate(data, "R4")
        except Rejected as exc:
            return exc
        return None

    async def scenario() -> list[Rejected | None]:
        await workers.start()
        try:
            return await asyncio.gather(*(one(data) for data in bodies))
        finally:
            await workers.stop()

    workers = ValidationWorkers(2)
    answers = run(scenario())
    for i, answer in enumerate(answers):
        if i % 3:
            assert answer is None
        else:
            assert answer is not None and same(answer, expected)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_body_over_the_pipe_buffer(loop: str) -> None:
    """uvloop (what ``run.py serve`` installs) makes a pipe it watches non-blocking: the
    request is still written whole, however much larger than the pipe's buffer it is."""
    large = padded(1500)  # larger than the pipe buffer too
    data = body(large)
    assert len(data) > 8 * DIRECT_WRITE
    broken = copy.deepcopy(large)
    broken["entry"][-1]["resource"]["status"] = 7
    expected = in_process(broken)

    async def scenario() -> None:
        workers = ValidationWorkers(1)
        await workers.start()
        try:
            assert await workers.validate(data, "R4") is None
            assert same(await rejection(workers, body(broken)), expected)
        finally:
            await workers.stop()

    factory = asyncio.new_event_loop if loop == "asyncio" else uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(scenario(), GUARD))


def test_a_worker_killed_while_validating_is_replaced() -> None:
    slow = body(padded(3000))  # over half a second of validation

    async def scenario() -> None:
        workers = ValidationWorkers(1)
        await workers.start()
        try:
            [pid] = workers.pids
            lost = asyncio.create_task(workers.validate(slow, "R4"))
            await asyncio.sleep(0)  # one turn of the loop (no time): the task sends to the worker
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(ValidatorLost, match=str(pid)):
                await lost
            assert await workers.validate(body(SAMPLE), "R4") is None
            assert len(workers.pids) == 1 and pid not in workers.pids
            assert exited(pid, GUARD)
        finally:
            await workers.stop()

    run(scenario())


def test_a_worker_dead_before_the_request_is_replaced() -> None:
    async def scenario() -> None:
        workers = ValidationWorkers(1)
        await workers.start()
        try:
            [pid] = workers.pids
            os.kill(pid, signal.SIGKILL)
            assert exited(pid, GUARD)  # blocking: the engine has not noticed yet
            with pytest.raises(ValidatorLost, match=str(pid)):
                await workers.validate(body(SAMPLE), "R4")
            assert same(await rejection(workers, body(invalid())), in_process(invalid()))
            assert len(workers.pids) == 1 and pid not in workers.pids
        finally:
            await workers.stop()

    run(scenario())


def test_stop_ends_every_worker_and_fails_requests_in_flight() -> None:
    slow = body(padded(3000))

    async def scenario() -> list[int]:
        workers = ValidationWorkers(2)
        await workers.stop()  # never started: nothing to do
        await workers.start()
        pids = workers.pids
        assert len(pids) == 2 and not any(exited(pid) for pid in pids)
        in_flight = [asyncio.create_task(workers.validate(slow, "R4")) for _ in range(3)]
        await asyncio.sleep(0)  # one turn of the loop: two are sent, one waits for a worker
        await workers.stop()
        await workers.stop()
        for task in in_flight:
            with pytest.raises(ValidatorLost):
                await task
        with pytest.raises(ValidatorLost):
            await workers.validate(body(SAMPLE), "R4")
        assert workers.pids == []
        return pids

    pids = run(scenario())
    assert all(exited(pid) for pid in pids)
