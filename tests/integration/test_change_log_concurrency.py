"""A reader following the change-log cursor sees every change exactly once, in order, while
several writers on two replicas commit concurrently and one long transaction commits last."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.schema import change_log
from adapters.persistence.store import Repository
from statemachine.changes import ChangeCursor, ChangeRecord
from statemachine.domain import Plan
from statemachine.instance_machine import InstanceTrigger
from tests.conftest import POSTGRES_URL
from tests.records import message_record

WRITERS = 4
FLIPS = 15  # instance changes per writer
SENDS = 10  # message inserts per writer (group-committed)


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[list[Repository]]:
    count = 2 if POSTGRES_URL else 1  # SQLite is embedded: one process
    engines = [create_engine(database_url, pool_size=4) for _ in range(count)]
    await upgrade_to_head(engines[0])
    repos = [Repository(engine, group_commit_window=0.002) for engine in engines]
    try:
        yield repos
    finally:
        for repo in repos:
            await repo.aclose()
        for engine in engines:
            await engine.dispose()


async def writer(repo: Repository, instance_id: str) -> None:
    for n in range(FLIPS):
        trigger = InstanceTrigger.REPORT_DISCONNECTED if n % 2 == 0 else InstanceTrigger.REPORT_CONNECTED
        change = await repo.apply_instance_trigger(instance_id, trigger, source="test", new_phone="5511999990000")
        assert change is not None
        assert change.decision.changed
        if n < SENDS:
            await repo.insert_message(
                message_record(id=f"{instance_id}-{n:02d}", instance_id=instance_id, idempotency_key=f"k{n}")
            )
        await asyncio.sleep(0)


async def test_reader_sees_every_change_once_in_order_with_a_late_commit(replicas: list[Repository]) -> None:
    ids = [f"cc-{n}" for n in range(WRITERS + 1)]
    for instance_id in ids:
        await replicas[0].upsert_instance(instance_id, instance_id, "tok-secret-123456", Plan.PRO)
    start = await replicas[0].head_change_cursor()

    seen: list[ChangeRecord] = []
    expected = WRITERS * (FLIPS + SENDS) + (1 if POSTGRES_URL else 0)
    done = asyncio.Event()
    long_committed = asyncio.Event()
    seen_before_long_commit: list[ChangeRecord] = []
    committed_early: list[int] = []

    async def reader() -> None:
        cursor: ChangeCursor | None = start
        idle_after_done = 0
        for _ in range(15_000):  # bounded (~30 s); normally ends after a few hundred reads
            page = await replicas[-1].read_changes(cursor, limit=7)
            seen.extend(page.changes)
            if not long_committed.is_set():
                seen_before_long_commit.extend(page.changes)
            assert cursor is None or page.cursor >= cursor
            cursor = page.cursor
            if done.is_set() and not page.changes and len(seen) >= expected:
                # Caught up; one more empty read shows nothing else turns up.
                idle_after_done += 1
                if idle_after_done >= 2:
                    return
            await asyncio.sleep(0.002)
        raise AssertionError("reader never caught up")

    reading = asyncio.create_task(reader())
    long_instance = ids[-1]
    if POSTGRES_URL:
        # Starts first (lowest seq of the run), commits last, on the other replica.
        async with replicas[0].transaction() as conn:
            change = await replicas[0].apply_instance_trigger(
                long_instance, InstanceTrigger.REPORT_DISCONNECTED, source="long", conn=conn
            )
            assert change is not None
            await asyncio.gather(*(writer(replicas[n % len(replicas)], ids[n]) for n in range(WRITERS)))
            await asyncio.sleep(0.1)  # the reader has caught up with everything committed
            # What a reader that simply followed `seq` would already have been shown.
            async with replicas[-1].engine.connect() as other:
                committed_early = [r.seq for r in await other.execute(select(change_log.c.seq))]
        long_committed.set()
    else:
        await asyncio.gather(*(writer(replicas[0], ids[n]) for n in range(WRITERS)))
    done.set()
    await asyncio.wait_for(reading, 60)

    async with replicas[0].engine.connect() as conn:
        stored = [r.event_id for r in await conn.execute(select(change_log.c.event_id))]
    assert len(stored) == expected
    assert len(seen) == expected, "a change was skipped or seen twice"
    assert sorted(c.event_id for c in seen) == sorted(stored)
    assert [c.cursor for c in seen] == sorted(c.cursor for c in seen)
    if POSTGRES_URL:
        late = [c for c in seen if c.payload.get("source") == "long"]
        assert len(late) == 1
        # The row really committed late: every other row, all with a higher seq, had committed
        # before it (a seq-following reader would have passed it by); the horizon held the
        # reader back until it could be read in order.
        assert len(committed_early) == expected - 1
        assert min(committed_early) > late[0].seq
        assert seen_before_long_commit == []
        assert seen[0] == late[0]


async def test_group_committed_inserts_log_exactly_the_rows_they_created(replicas: list[Repository]) -> None:
    repo = replicas[0]
    start = await repo.head_change_cursor()
    records = [message_record(id=f"gl-{i:03d}", instance_id="gl-1", idempotency_key=f"k-{i % 25}") for i in range(100)]
    results = await asyncio.gather(*(repo.insert_message(r) for r in records))
    created = sorted(stored.id for stored, was_created in results if was_created)
    assert len(created) == 25

    logged: list[ChangeRecord] = []
    cursor: ChangeCursor | None = start
    for _ in range(600):  # bounded wait: the PostgreSQL horizon is cluster-wide
        page = await repo.read_changes(cursor, limit=1000)
        logged.extend(page.changes)
        cursor = page.cursor
        if len(logged) >= len(created) and not page.changes:
            break
        await asyncio.sleep(0.05)
    assert sorted(c.message_id or "" for c in logged) == created  # none for a key that existed
    assert {(c.kind.value, c.payload["to_state"]) for c in logged} == {("message.state_changed", "PENDING")}
