"""PostgreSQL LISTEN on the change-log channel: a wake-up for the change feed's tail, never the truth.

The log, read in commit-safe order, is what subscribers get; a lost notification only costs the
fallback poll's interval (docs/events.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from adapters.persistence.changelog import CHANGES_CHANNEL
from statemachine.ports import ChangeWakeups

log = logging.getLogger("wapi_guard.events")


def change_listener(dsn: str) -> ChangeWakeups:
    """The feed's wake-up source for `dsn` (a plain asyncpg DSN)."""

    async def listen(wake: Callable[[], None], listening: Callable[[bool], None]) -> None:
        await listen_forever(dsn, wake, listening)

    return listen


async def listen_forever(dsn: str, wake: Callable[[], None], listening: Callable[[bool], None]) -> None:
    """LISTEN on a connection of its own; reconnects with backoff. Calls `wake` on every
    notification (and once after each connect), `listening(True/False)` as the connection comes
    and goes."""
    import asyncpg

    delay = 0.5
    while True:
        conn = None
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            await conn.add_listener(CHANGES_CHANNEL, lambda *_args: wake())
            listening(True)
            delay = 0.5
            wake()  # anything committed while we were not listening
            closed = asyncio.Event()
            conn.add_termination_listener(lambda _conn, done=closed: done.set())
            while not closed.is_set():
                try:
                    await asyncio.wait_for(closed.wait(), 15.0)
                except TimeoutError:  # a silently dead socket: find out by asking
                    await conn.fetchval("SELECT 1", timeout=5)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("change LISTEN connection failed: %s", type(error).__name__)
        finally:
            listening(False)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
