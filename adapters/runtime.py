"""The event loop every long-running command runs on: uvloop where it is installed.

Why: the gRPC server, asyncpg and aiohttp all spend less CPU per request on uvloop (benchmark:
a blocked send ~10% less server CPU, a status webhook ~15% less). `asyncio` stays one
setting away (`--event-loop asyncio` / WAPIGUARD_EVENT_LOOP=asyncio), e.g. to rule the loop out
while debugging.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's default) when asked for or not installed."""
    name = name or os.environ.get("WAPIGUARD_EVENT_LOOP", "uvloop")
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # not on this platform (Windows): asyncio it is
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], *, event_loop: str | None = None) -> T:
    with asyncio.Runner(loop_factory=loop_factory(event_loop)) as runner:
        return runner.run(main)


async def cancel_and_wait(tasks: list[asyncio.Task[None]], *, timeout: float = 5.0) -> list[asyncio.Task[None]]:
    """Cancels background loops and waits for them, re-cancelling while they run.

    Why: on Python 3.11 a cancellation that races an inner `asyncio.wait_for` timeout (asyncpg's
    connect and close use one) can be swallowed, and a loop then goes on forever; one `cancel()`
    and an unbounded `await` would hang shutdown. Returns the tasks still running at `timeout`.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending and (remaining := deadline - loop.time()) > 0:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=min(0.5, remaining))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a loop's crash was logged by the loop itself
    return list(pending)
