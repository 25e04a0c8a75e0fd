"""The Postgres fast lane for status webhooks decides on a row it read without a lock: when another
replica changes that row before the write, the write must not land, and the status must be decided
again on the fresh row. Two repositories (two replicas) on one real Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from adapters.persistence import pg_fast
from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.schema import events
from adapters.persistence.store import Repository
from adapters.wapi.webhooks import parse_webhook
from statemachine.domain import MessageState, Plan, StateChange
from statemachine.events import EventReason
from tests.conftest import POSTGRES_URL
from tests.records import message_record

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="the fast lane is Postgres only")

NOW = datetime.now(UTC)


def _status(word: str) -> tuple[Any, bytes]:
    body = json.dumps(
        {"event": "webhookStatus", "instanceId": "I-1", "messageId": "P-1", "status": word, "moment": 1_750_000_000}
    ).encode()
    return parse_webhook(body), body


async def test_a_row_changed_between_read_and_write_is_decided_again(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    replica_a, replica_b = Repository(engine), Repository(engine)
    try:
        await replica_a.upsert_instance("I-1", "I-1", "tok-1", Plan.LITE)
        sent = message_record(
            id="m-1",
            state=MessageState.SENT,
            provider_message_id="P-1",
            idempotency_key="k-1",
            at=NOW,
            sent_at=NOW,
            history=[StateChange(MessageState.PENDING, MessageState.SENT, "PROVIDER_ACCEPTED", "send", NOW)],
            version=2,
        )
        await replica_a.insert_message(sent)

        # Replica B applies "read" after A has read the row and before A's write reaches Postgres.
        original = replica_a._status_lease.driver
        raced = 0

        @asynccontextmanager
        async def racing_driver(statement: str) -> AsyncIterator[Any]:
            nonlocal raced
            if statement is pg_fast.APPLY_STATUSES and raced == 0:
                raced += 1
                read_event, read_body = _status("read")
                applied = await replica_b.ingest(read_event, read_body, {}, NOW)
                assert applied.reason == EventReason.APPLIED
            async with original(statement) as driver:
                yield driver

        replica_a._status_lease.driver = racing_driver  # type: ignore[method-assign]
        delivered_event, delivered_body = _status("delivered")
        result = await replica_a.ingest(delivered_event, delivered_body, {}, NOW)

        assert raced == 1
        assert not result.duplicate
        assert result.reason == EventReason.STALE_STATUS  # decided again on the READ row, not applied
        stored = await replica_a.get_message("m-1")
        assert stored is not None
        assert stored.state is MessageState.READ
        assert stored.version == 3  # B's read bumps it; A's stale entry is recorded without a bump
        assert [(c.to_state, c.applied) for c in stored.history] == [
            (MessageState.SENT, True),
            (MessageState.READ, True),
            (MessageState.DELIVERED, False),
        ]
        async with engine.connect() as conn:
            rows = (await conn.execute(select(events.c.status, events.c.reason).order_by(events.c.status))).all()
        assert [(r.status, r.reason) for r in rows] == [
            ("DELIVERED", EventReason.STALE_STATUS.value),
            ("READ", EventReason.APPLIED.value),
        ]
    finally:
        await replica_a.aclose()
        await replica_b.aclose()
        await engine.dispose()


def _checked_out(engine: Any) -> int:
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


async def test_a_leased_connection_goes_back_to_the_pool_when_idle_and_is_replaced_when_broken(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    lease = pg_fast.Lease(engine, idle=0.2)
    try:
        async with lease.driver("SELECT 1") as driver:
            first_pid = await driver.fetchval("SELECT pg_backend_pid()")
        assert _checked_out(engine) == 1  # kept while the lane is busy
        for _ in range(50):  # bounded: ~2.5 s at most
            if _checked_out(engine) == 0:
                break
            await asyncio.sleep(0.05)
        assert _checked_out(engine) == 0  # handed back after `idle` seconds without use

        # The server kills the leased connection: that statement fails as a storage error, the
        # connection is thrown away, and the next statement runs on a fresh one.
        async with lease.driver("SELECT 1") as driver:
            pid = await driver.fetchval("SELECT pg_backend_pid()")
        async with engine.connect() as admin:
            await admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError):
            async with lease.driver("SELECT 1") as driver:
                await driver.fetchval("SELECT 1")
        async with lease.driver("SELECT 1") as driver:
            assert await driver.fetchval("SELECT pg_backend_pid()") not in (pid, 0)
        assert first_pid
    finally:
        await lease.aclose()
        await engine.dispose()
