"""Answering the group-commit writer's waiters, from its thread.

A waiter is a ``concurrent.futures.Future`` (a thread or ``asyncio.wrap_future`` waits on
it) or an asyncio future of some event loop (an MLLP connection's). The writer answers a
whole commit at once: each loop is handed its answers in one ``call_soon_threadsafe``,
not one call a message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

Waiter = asyncio.Future[Any] | Future[Any]


def resolve(waiter: Future[Any], outcome: Any) -> None:
    """Answer a thread-side waiter, unless it was cancelled or answered already (a dying
    writer refuses whoever it took, answered or not): ``asyncio.wrap_future`` cancels it
    when its awaiting task is, and answering it then would raise in the writer thread."""
    if waiter.done() or not waiter.set_running_or_notify_cancel():
        return
    if isinstance(outcome, BaseException):
        waiter.set_exception(outcome)
    else:
        waiter.set_result(outcome)


def answer(
    waiters: Sequence[tuple[Waiter, asyncio.AbstractEventLoop | None]], outcomes: Sequence[Any]
) -> None:
    """Give each ``(waiter, its loop or None)`` its outcome (a result or an exception)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
    for (waiter, loop), outcome in zip(waiters, outcomes, strict=True):
        if loop is None:
            resolve(waiter, outcome)  # type: ignore[arg-type]
        else:
            by_loop.setdefault(loop, []).append((waiter, outcome))
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, answers)
        except RuntimeError:
            log.warning("event loop closed before %d answer(s) could be given", len(answers))


def _settle(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for waiter, outcome in answers:
        if waiter.done():
            continue
        if isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            waiter.set_result(outcome)
