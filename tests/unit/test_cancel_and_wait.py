"""Shutdown of background loops stays bounded even when a loop swallows one cancellation."""

from __future__ import annotations

import asyncio

from adapters.runtime import cancel_and_wait


async def test_a_loop_that_swallows_a_cancellation_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=5) == []
    assert task.cancelled()
    assert swallowed == 2


async def test_a_loop_that_never_stops_is_reported_not_awaited_forever() -> None:
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=0.3) == [task]
    released.set()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done()
