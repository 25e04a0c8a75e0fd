"""The event and subscription services' storage is bounded like every other gRPC method's
(adapters/persistence/bounded.py): a database that stops answering costs the caller the storage
budget (`--db-timeout`) and an UNAVAILABLE/STORAGE_UNAVAILABLE, not its whole deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import pytest
from sqlalchemy import text

from adapters.persistence.db import create_engine
from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from tests.conftest import POSTGRES_URL
from tests.integration.harness import rich_error, start_harness, stop_harness

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="a table lock that blocks readers: PostgreSQL")

BUDGET = 0.3
DEADLINE = 8.0


async def test_event_and_subscription_calls_answer_unavailable_within_the_storage_budget(database_url: str) -> None:
    harness = await start_harness(database_url, db_timeout=BUDGET)
    locker = create_engine(database_url)
    try:
        events = events_pb2_grpc.EventServiceStub(harness.channel)
        subscriptions = events_pb2_grpc.WebhookSubscriptionServiceStub(harness.channel)
        async with locker.begin() as conn:
            # Another session holds the tables: every read of them waits (a database that stalls).
            await conn.execute(text("LOCK TABLE change_log, webhook_subscriptions IN ACCESS EXCLUSIVE MODE"))
            calls: list[Awaitable[object]] = [
                events.ListEvents(events_pb2.ListEventsRequest(from_oldest=True, page_size=10), timeout=DEADLINE),
                subscriptions.ListWebhookSubscriptions(events_pb2.ListWebhookSubscriptionsRequest(), timeout=DEADLINE),
            ]
            for call in calls:
                started = asyncio.get_running_loop().time()
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                error = rich_error(caught.value)
                assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "STORAGE_UNAVAILABLE")
                assert asyncio.get_running_loop().time() - started < DEADLINE / 2
    finally:
        await locker.dispose()
        await stop_harness(harness)
