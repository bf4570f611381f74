"""The dispatcher's store calls run in threads; a stop that cancels a worker must not
return while one of them still works in the store (the store is closed next)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from router.dispatch import _store_work


def test_a_cancelled_store_call_gives_way_only_once_its_thread_is_done():
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def claim() -> int:
        started.set()
        release.wait(30)
        finished.set()
        return 1

    async def main() -> None:
        task = asyncio.create_task(_store_work(claim))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.05)
        assert not done, "the task gave way while its thread was still in the store"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()

    asyncio.run(main())


def test_an_uncancelled_store_call_returns_the_threads_result():
    assert asyncio.run(_store_work(lambda a, b=0: a + b, 2, b=3)) == 5
