"""Concurrent inserts are group-committed; a bad row never takes its batch down with it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.repository import Repository
from statemachine.domain import MessageState, StateChange
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
