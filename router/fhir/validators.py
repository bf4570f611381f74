"""FHIR model validation in a fixed set of worker processes.

fhir.resources validates in Python (pydantic): a 5 ms validation holds the GIL, stalling
the event loop, the MLLP listeners and the store's writer thread, and caps FHIR throughput
at one core. So the models are checked in worker processes. ProcessPoolExecutor doubled
throughput but added ~1 ms a request (a manager thread, a feeder thread, queues and
pickling between them); here each worker has its own pipe and the event loop talks to it
directly: the request is written from the loop thread (a body over 64 KiB from a thread,
so a full pipe never blocks the loop), and the reply is read when the loop sees the pipe
readable. No thread is on the path of a request.

Workers come from a forkserver (the engine has threads, so no plain fork; spawn would
import fhir.resources anew for each worker) that preloads the models BaRS and booking
messages use, so a replacement for a worker that died starts in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import multiprocessing
import os
import pickle
import signal
from dataclasses import dataclass
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, Literal

from router.fhir.outcome import Issue, Rejected, reject
from router.fhir.validation import parse_json, validate

log = logging.getLogger(__name__)

DIRECT_WRITE = 64 * 1024  # a request up to this size fits the pipe's buffer: written at once
READY_TIMEOUT = 30.0  # seconds for a new worker to import and warm up
JOIN_TIMEOUT = 2.0  # seconds for a worker to exit once its pipe is closed, then terminated
RESPAWN_DELAY = 1.0  # seconds between attempts to replace a lost worker
VERSIONS: dict[str, bytes] = {"R4": b"4", "STU3": b"3"}
_VERSION_OF = {code[0]: version for version, code in VERSIONS.items()}
# The models BaRS and booking messages carry, imported once by the forkserver (fhir.resources
# imports each resource and datatype model on first use, ~50 ms for a BaRS referral).
_R4B = (
    "bundle messageheader servicerequest patient observation encounter careplan consent flag "
    "healthcareservice location organization practitioner practitionerrole appointment "
    "schedule slot operationoutcome address codeableconcept coding contactpoint extension "
    "humanname identifier meta period reference"
)
_STU3 = "appointment slot schedule operationoutcome"
PRELOAD = [
    "__main__",  # imported by each worker otherwise (a script's imports: tie's are the engine)
    __name__,
    *(f"fhir.resources.R4B.{name}" for name in _R4B.split()),
    *(f"fhir.resources.STU3.{name}" for name in _STU3.split()),
]
_WARM_UP = json.dumps(
    {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [
            {
                "fullUrl": "urn:uuid:8e3f6a3c-7d1b-4c8e-9f1a-2b3c4d5e6f70",
                "resource": {
                    "resourceType": "MessageHeader",
                    "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
                    "eventCoding": {"system": "https://example.org/event", "code": "warm-up"},
                    "source": {"endpoint": "https://example.org"},
                },
            }
        ],
    }
).encode()


class ValidatorLost(Exception):
    """The worker validating a request died (crash, kill); the request was not validated."""


def check(body: bytes, version: Literal["R4", "STU3"]) -> None:
    """Parse and validate ``body``: ``Rejected`` if it is not valid (a body that is not a
    resource too: the engine checks its shape at the same time), 500 if validation broke."""
    document = parse_json(body)
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise reject(400, "invalid", "not a FHIR resource", "resourceType")
    try:
        validate(document, version)
    except Rejected:
        raise
    except Exception as exc:
        log.exception("validating a FHIR %s body failed", version)
        diagnostics = f"validation failed: {type(exc).__name__}: {exc}"
        raise Rejected(500, [Issue("exception", diagnostics)]) from exc


def _answer(request: bytes) -> bytes:
    """The reply to a request (a version byte, then the body): empty when it is valid."""
    try:
        check(request[1:], _VERSION_OF[request[0]])
    except Rejected as exc:
        issues = [(i.code, i.diagnostics, i.expression, i.severity) for i in exc.issues]
        return pickle.dumps((exc.status, issues))
    return b""


def _serve(conn: Connection) -> None:
    """A worker: warm up, say so, then answer each request until the engine closes the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when its workers stop
    with contextlib.suppress(Rejected):
        check(_WARM_UP, "R4")
    gc.freeze()  # the models and schemas live as long as the worker: out of every collection
    try:
        conn.send_bytes(b"")
        while True:
            conn.send_bytes(_answer(conn.recv_bytes()))
    except (EOFError, OSError):
        return


def _rejected(reply: bytes) -> Rejected:
    status, issues = pickle.loads(reply)
    return Rejected(status, [Issue(*issue) for issue in issues])


@cache
def _context() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _spawn() -> tuple[BaseProcess, Connection]:
    """A new worker, warmed up (blocking: run in a thread)."""
    context = _context()
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(theirs,), name="tie-validator", daemon=True)
    try:
        process.start()
        theirs.close()
        if not ours.poll(READY_TIMEOUT):
            raise TimeoutError(f"validation worker {process.pid} not ready in {READY_TIMEOUT}s")
        ours.recv_bytes()
    except BaseException:
        theirs.close()
        _retire(process, ours)
        raise
    return process, ours


def _retire(process: BaseProcess, conn: Connection) -> None:
    """Close the pipe (the worker exits on EOF) and join the process (blocking)."""
    conn.close()
    if process.pid is None:
        return
    process.join(JOIN_TIMEOUT)
    if process.exitcode is None:
        process.terminate()
        process.join(JOIN_TIMEOUT)
    if process.exitcode is None:
        process.kill()
        process.join()
    process.close()


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection
    fd: int
    pid: int
    answer: asyncio.Future[bytes] | None = None  # the reply awaited, while it validates
    sending: asyncio.Future[None] | None = None  # a large request written by a thread
    lost: bool = False


class ValidationWorkers:
    """``workers`` processes validating FHIR bodies; requests beyond them wait their turn.

    With ``workers`` 0 a body is validated in a thread of this process instead.
    """

    def __init__(self, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"workers must be 0 or more, not {workers}")
        self._size = workers
        self._state: Literal["new", "running", "stopped"] = "new"
        self._workers: set[_Worker] = set()
        # Idle workers, the last to finish first (its caches are the warmest: one after
        # another, requests go to one worker); None once stopped (each taker puts it back).
        self._idle: asyncio.Queue[_Worker | None] = asyncio.LifoQueue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        return sorted(worker.pid for worker in self._workers)

    async def start(self) -> None:
        """Start the workers (the first start also starts the forkserver, ~0.5 s). Once
        stopped they stay stopped (the engine is stopping): ``validate`` raises
        ValidatorLost."""
        if self._state != "new":
            return
        self._state = "running"
        self._loop = asyncio.get_running_loop()
        if self._size == 0:
            return
        started = await asyncio.gather(
            *(asyncio.to_thread(_spawn) for _ in range(self._size)), return_exceptions=True
        )
        failed = [result for result in started if isinstance(result, BaseException)]
        for result in started:
            if not isinstance(result, BaseException):
                await self._adopt(*result)
        if failed:
            await self.stop()
            raise failed[0]

    async def validate(self, body: bytes, version: Literal["R4", "STU3"]) -> None:
        """None when ``body`` is valid; ``Rejected`` as ``check`` raises it in this process;
        ``ValidatorLost`` if the worker died first (a new one takes its place)."""
        if self._size == 0:
            await asyncio.to_thread(check, body, version)
            return
        if self._state == "new" or self._loop is None:
            raise RuntimeError("validation workers not started")
        request = VERSIONS[version] + body
        while True:
            worker = await self._idle.get()
            if worker is None:
                self._idle.put_nowait(None)
                raise ValidatorLost("the validation workers are stopped")
            if not worker.lost:
                break
        answer = worker.answer = self._loop.create_future()
        worker.sending = None
        try:
            if len(request) <= DIRECT_WRITE:
                worker.conn.send_bytes(request)
            else:
                sending = worker.sending = asyncio.ensure_future(
                    asyncio.to_thread(worker.conn.send_bytes, request)
                )
                await asyncio.shield(sending)
        except OSError as exc:
            self._lose(worker, f"could not be sent the request ({exc})")
        except asyncio.CancelledError:
            answer.cancel()
            raise
        reply = await answer
        if reply:
            raise _rejected(reply)

    async def stop(self) -> None:
        """Stop the workers and wait for them to exit; waiting requests get ValidatorLost."""
        if self._state == "new":
            return
        state, self._state = self._state, "stopped"
        if state != "running" or self._size == 0:
            return
        self._stopping.set()
        while not self._idle.empty():
            self._idle.get_nowait()
        self._idle.put_nowait(None)
        workers = list(self._workers)
        for worker in workers:
            self._drop(worker, "stopped")
        if self._tasks:
            await asyncio.wait(self._tasks)
        await asyncio.gather(*(self._close(worker) for worker in workers))

    async def _adopt(self, process: BaseProcess, conn: Connection) -> None:
        """Put a new worker to work; retire it if stopped meanwhile."""
        if self._state != "running" or self._loop is None:
            await asyncio.to_thread(_retire, process, conn)
            return
        assert process.pid is not None
        worker = _Worker(process, conn, conn.fileno(), process.pid)
        self._workers.add(worker)
        # Watched while idle too: a worker only writes when asked, so an idle worker's pipe
        # turning readable means it died.
        self._loop.add_reader(worker.fd, self._readable, worker)
        # uvloop's add_reader makes the pipe non-blocking: a large request written by a
        # thread would then fail as soon as the pipe is full (EAGAIN), not wait for the worker.
        os.set_blocking(worker.fd, True)
        self._idle.put_nowait(worker)

    def _readable(self, worker: _Worker) -> None:
        answer, worker.answer = worker.answer, None
        if answer is None:
            self._lose(worker, "died while idle")
            return
        try:
            reply = worker.conn.recv_bytes()
        except (EOFError, OSError) as exc:
            worker.answer = answer
            self._lose(worker, f"died while validating ({type(exc).__name__})")
            return
        self._idle.put_nowait(worker)
        if not answer.done():
            answer.set_result(reply)

    def _drop(self, worker: _Worker, why: str) -> None:
        """Forget ``worker``: its request, if any, gets ValidatorLost."""
        if worker.lost:
            return
        worker.lost = True
        self._workers.discard(worker)
        if self._loop is not None:
            self._loop.remove_reader(worker.fd)
        answer, worker.answer = worker.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(ValidatorLost(f"validation worker {worker.pid} {why}"))

    def _lose(self, worker: _Worker, why: str) -> None:
        if worker.lost:
            return
        log.error("validation worker %s %s; starting another", worker.pid, why)
        self._drop(worker, why)
        self._background(self._replace(worker))

    async def _replace(self, dead: _Worker) -> None:
        await self._close(dead)
        while self._state == "running":
            try:
                process, conn = await asyncio.to_thread(_spawn)
            except Exception:
                log.exception("starting a validation worker failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), RESPAWN_DELAY)
                continue
            await self._adopt(process, conn)
            return

    async def _close(self, worker: _Worker) -> None:
        """Join the worker, once no thread is writing to its pipe."""
        if worker.sending is not None:
            await asyncio.wait([worker.sending])
            if not worker.sending.cancelled():
                worker.sending.exception()  # retrieved: its request has its own answer
        await asyncio.to_thread(_retire, worker.process, worker.conn)

    def _background(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
