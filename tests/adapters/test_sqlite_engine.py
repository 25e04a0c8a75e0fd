"""The embedded SQLite engine survives cancellation: a request cancelled twice while its statement
runs (a client that gives up, then a server shutting down) leaves no task behind, so shutdown and
the event loop's close finish instead of waiting forever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from adapters.persistence.db import create_engine

# Long enough to be cancelled mid-statement (~1 s on an idle core; a million rows took 0.24 s, so a
# quiet machine finished it before the first cancellation at 0.2 s), short enough for the suite.
SLOW_READ = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5000000) SELECT count(*) FROM c"


async def test_a_statement_cancelled_twice_leaves_no_task_pending(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'cancel.db'}")
    try:

        async def read() -> None:
            async with engine.connect() as conn:
                await conn.execute(text(SLOW_READ))

        task = asyncio.create_task(read())
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()  # the second cancellation lands while the connection is being closed
        with pytest.raises(asyncio.CancelledError):
            await task
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        _done, pending = await asyncio.wait(others, timeout=20) if others else (set(), set())
        assert pending == set(), f"left pending after cancellation: {pending}"
        # The engine still works afterwards.
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
