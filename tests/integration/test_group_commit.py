"""Concurrent inserts are group-committed; a bad row never takes its batch down with it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.store import Repository
from statemachine.domain import MessageRecord, MessageState, StateChange
from tests.conftest import POSTGRES_URL
from tests.records import message_record

NOW = datetime.now(UTC)
TEMPLATE = message_record(
    instance_id="gc-1",
    state=MessageState.FAILED,
    failure_reason="SESSION_INCOMPLETE",
    at=NOW,
    history=[StateChange("", MessageState.FAILED, "SESSION_INCOMPLETE", "preflight", NOW)],
)


async def test_concurrent_inserts_with_shared_keys_keep_one_row_per_key(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    try:
        records = [replace(TEMPLATE, id=f"m-{i}", idempotency_key=f"k-{i % 40}") for i in range(120)]
        results = await asyncio.gather(*(repo.insert_message(r) for r in records))
        created = [stored.id for stored, was_created in results if was_created]
        assert len(created) == 40
        by_key: dict[str, set[str]] = {}
        for (stored, _), record in zip(results, records, strict=True):
            by_key.setdefault(record.idempotency_key, set()).add(stored.id)
        assert all(len(ids) == 1 for ids in by_key.values())  # every caller of a key sees the same row
    finally:
        await repo.aclose()
        await engine.dispose()


@pytest.mark.skipif(not POSTGRES_URL, reason="SQLite does not enforce column lengths")
async def test_one_bad_row_does_not_fail_its_batch(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    try:
        good = [replace(TEMPLATE, id=f"g-{i}", idempotency_key=f"g-{i}") for i in range(10)]
        bad = replace(TEMPLATE, id="bad", idempotency_key="bad", to="9" * 500)
        results = await asyncio.gather(*(repo.insert_message(r) for r in [*good, bad]), return_exceptions=True)
        assert all(isinstance(r, tuple) and r[1] for r in results[:10])
        assert isinstance(results[10], Exception)
        assert await repo.get_message("bad") is None
    finally:
        await repo.aclose()
        await engine.dispose()


async def _sent(repo: Repository, msg: MessageRecord) -> MessageRecord:
    return await repo.record_outcome(msg, provider_message_id=f"P-{msg.id}", failure=None, detail="", source="send")


async def test_concurrent_sent_records_share_commits_and_each_is_stored_once(database_url: str) -> None:
    """PENDING → SENT under load: one commit per batch on SQLite too (as PostgreSQL's fast lane),
    every message SENT with its history entry and its change-log row, none twice."""
    from sqlalchemy import event, func, select

    from adapters.persistence.schema import change_log

    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine, group_commit_window=0.005)
    commits = 0

    def count(_conn: object) -> None:
        nonlocal commits
        commits += 1

    try:
        pending = [
            replace(
                message_record(instance_id="gc-sent", at=NOW),
                id=f"s-{i}",
                idempotency_key=f"s-{i}",
            )
            for i in range(30)
        ]
        for record in pending:
            assert (await repo.insert_message(record))[1]
        event.listen(engine.sync_engine, "commit", count)
        sent = await asyncio.gather(*(_sent(repo, m) for m in pending))
        event.remove(engine.sync_engine, "commit", count)
        assert [m.state if m else None for m in sent] == [MessageState.SENT] * 30
        for record in pending:
            stored = await repo.get_message(record.id)
            assert stored is not None
            assert stored.state is MessageState.SENT
            assert stored.provider_message_id == f"P-{record.id}"
            assert [h.to_state for h in stored.history] == [MessageState.PENDING, MessageState.SENT]
            assert stored.version == 2
        async with engine.connect() as conn:
            logged = (
                await conn.execute(
                    select(func.count()).where(
                        change_log.c.instance_id == "gc-sent", change_log.c.payload.like('%"SENT"%')
                    )
                )
            ).scalar_one()
        assert logged == 30
        # Again: the rows moved on, so nothing is written twice (the stored SENT stands).
        again = await asyncio.gather(*(_sent(repo, m) for m in pending[:5]))
        assert [(m.state, m.version) for m in again] == [(MessageState.SENT, 2)] * 5
        async with engine.connect() as conn:
            logged_again = (
                await conn.execute(
                    select(func.count()).where(
                        change_log.c.instance_id == "gc-sent", change_log.c.payload.like('%"SENT"%')
                    )
                )
            ).scalar_one()
        assert logged_again == 30
        if not POSTGRES_URL:  # PostgreSQL's lane writes over raw asyncpg (no SQLAlchemy commit events)
            assert commits < 15, commits
    finally:
        await repo.aclose()
        await engine.dispose()
