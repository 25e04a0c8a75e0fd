"""The change feed's tail with no stream attached: a burst of commits costs a few reads of the
log, not one each (every group commit NOTIFYs on PostgreSQL); an attached stream still gets
every change."""

from __future__ import annotations

import asyncio
from typing import Any

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.store import Repository
from services.app.events import ChangeFeed
from statemachine.changes import ChangeCursor, ChangePage
from tests.records import message_record


class CountingLog:
    """The real repository, with its log reads counted."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.reads = 0

    async def read_changes(self, after: ChangeCursor | None, **kwargs: Any) -> ChangePage:
        self.reads += 1
        return await self.repo.read_changes(after, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.repo, name)


async def test_a_burst_of_wakeups_with_no_stream_costs_a_few_reads(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    log = CountingLog(repo)
    feed = ChangeFeed(log, listen_fallback_interval=30.0)
    await feed.start()
    watched = feed.watch()
    try:
        await asyncio.sleep(0.1)
        log.reads = 0
        for _ in range(40):  # 40 commits' wake-ups over ~0.2 s
            feed.nudge()
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        assert 1 <= log.reads <= 8, log.reads
        # A change committed while nobody streams, then a stream attaches: the tail still reads it
        # (gathering delays a read, never skips one) and the fan-out's watch is told.
        watched.clear()
        start = feed.position
        listener = feed.listen()
        assert (await repo.insert_message(message_record(id="idle-1", idempotency_key="idle-1")))[1]
        feed.nudge()
        taken: list[str] = []
        for _ in range(100):
            if listener.wake.is_set() and (got := feed.take(start, lambda _change: True, 10)):
                taken = [change.message_id or "" for change in got[0]]
                if taken:
                    break
            await asyncio.sleep(0.02)
        assert taken[:1] == ["idle-1"]
        assert watched.is_set()
    finally:
        await feed.aclose()
        await repo.aclose()
        await engine.dispose()
