"""Two replicas on one PostgreSQL: a subscriber killed mid-stream and resumed on the other
replica, while both write concurrently and one long transaction commits last, receives every
change exactly once, in log order."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import text

from adapters.persistence import changelog
from adapters.persistence.db import create_engine
from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from statemachine.changes import Change, ChangeKind
from tests.conftest import POSTGRES_URL
from tests.integration.harness import Harness, start_harness, stop_harness

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="two replicas need PostgreSQL"),
]
PER_WRITER = 40


async def inbound(h: Harness, tag: str, n: int) -> None:
    for i in range(n):
        await h.webhook(
            {
                "event": "webhookReceived",
                "instanceId": "INST-A",
                "messageId": f"3EB0{tag}{i:04d}",
                "chat": {"id": "5511988887777"},
                "moment": 1_749_132_337 + i,
                "msgContent": {"conversation": f"{tag} {i}"},
            }
        )


async def read_some(stream: Any, until: int, got: list[str], cursors: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(got) < until:
        assert time.monotonic() < deadline, f"only {len(got)} of {until} events"
        item = await asyncio.wait_for(stream.read(), timeout)
        assert item is not grpc.aio.EOF
        if item.HasField("event"):
            got.append(item.event.id)
            cursors.append(item.event.cursor)
        else:
            cursors.append(item.progress.cursor)


async def test_resume_on_the_other_replica_sees_every_change_once_in_order(database_url: str) -> None:
    a = await start_harness(database_url, event_progress_interval=0.2)
    b = await start_harness(database_url, event_progress_interval=0.2)
    long_engine = create_engine(database_url, pool_size=1)
    try:
        await a.register("INST-A")
        head = (
            await events_pb2_grpc.EventServiceStub(a.channel).GetEventCursors(events_pb2.GetEventCursorsRequest())
        ).head

        got: list[str] = []
        cursors: list[str] = []
        stream = events_pb2_grpc.EventServiceStub(a.channel).Subscribe(events_pb2.SubscribeRequest(cursor=head))
        # Both replicas write at once; the subscriber on A is killed mid-stream.
        first = asyncio.gather(inbound(a, "RA", PER_WRITER), inbound(b, "RB", PER_WRITER))
        await read_some(stream, PER_WRITER // 2, got, cursors)
        stream.cancel()
        await first

        # A long transaction takes its xid first and commits after every other writer.
        long_conn = await long_engine.connect()
        long_tx = await long_conn.begin()
        await changelog.append(
            long_conn,
            [Change(ChangeKind.MESSAGE_RECEIVED, "INST-A", datetime.now(UTC), {"instance_id": "INST-A", "body": {}})],
        )
        await asyncio.gather(inbound(a, "RC", PER_WRITER), inbound(b, "RD", PER_WRITER))
        total = 4 * PER_WRITER + 1
        # Resumed on the other replica while the long transaction is still open…
        resumed = events_pb2_grpc.EventServiceStub(b.channel).Subscribe(events_pb2.SubscribeRequest(cursor=cursors[-1]))
        await read_some(resumed, 2 * PER_WRITER, got, cursors)
        await asyncio.sleep(0.3)
        await long_tx.commit()  # …which commits last
        await long_conn.close()
        await read_some(resumed, total, got, cursors)
        resumed.cancel()

        async with long_engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        text("SELECT event_id FROM change_log WHERE kind = 'message.received' ORDER BY xid, seq")
                    )
                )
                .scalars()
                .all()
            )
        assert len(got) == len(set(got)) == total  # exactly once
        assert got == list(rows)  # log order
        assert json.dumps(got)  # ids are plain strings
    finally:
        await long_engine.dispose()
        await stop_harness(b)
        await stop_harness(a)
