"""Messages stuck in SENT raise an alert once, and a run of them stalls the instance."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2
from statemachine.domain import ProbeOutcome
from tests.conftest import POSTGRES_URL
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url, stuck_after=0.05, stall_threshold=3, sweep_interval=0)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def send(guard: Harness, instance_id: str, key: str) -> common_pb2.Message:
    return await guard.send.SendMessage(
        send_pb2.SendMessageRequest(
            instance_id=instance_id, to="5515981121710", idempotency_key=key, text=send_pb2.TextContent(body=key)
        )
    )


async def health(guard: Harness, instance_id: str) -> common_pb2.InstanceHealth:
    return await guard.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=instance_id))


def alerts(caplog: pytest.LogCaptureFixture, kind: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "alert", None) == kind]


async def test_stuck_messages_alert_once_and_stall_the_instance(
    guard: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wapi_guard.core")
    await guard.register("st-1")
    await guard.connect("st-1")
    sent = [await send(guard, "st-1", f"m{i}") for i in range(3)]
    await asyncio.sleep(0.1)

    stuck = await guard.app.jobs.sweep_once()
    assert sorted(m.id for m in stuck) == sorted(m.id for m in sent)
    assert await guard.app.jobs.sweep_once() == []  # alert once per message
    assert len(alerts(caplog, "MESSAGE_STUCK")) == 3
    assert len(alerts(caplog, "DELIVERY_STALLED")) == 1

    listed = await guard.send.ListMessages(send_pb2.ListMessagesRequest(stuck_only=True))
    assert {m.id for m in listed.messages} == {m.id for m in sent}
    assert all(m.stuck and m.state == common_pb2.MESSAGE_STATE_SENT for m in listed.messages)
    h = await health(guard, "st-1")
    assert (h.state, h.reason, h.stuck_messages) == (common_pb2.INSTANCE_STATE_DEGRADED, "DELIVERY_STALLED", 3)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(guard, "st-1", "blocked")
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DELIVERY_STALLED")

    # A routine probe that says "connected, with phone" does not clear it: a silent stall probes healthy.
    guard.provider.probe_result = lambda _i: ProbeOutcome(connected=True, phone="5511999990000")
    probed = await guard.health.GetInstanceHealth(
        instance_health_pb2.GetInstanceHealthRequest(instance_id="st-1", refresh=True)
    )
    assert probed.reason == "DELIVERY_STALLED"

    # A late delivery of one of them lifts the block.
    reply = await guard.webhook(
        {
            "event": "webhookStatus",
            "instanceId": "st-1",
            "messageId": sent[0].provider_message_id,
            "status": "delivered",
        }
    )
    assert [t.to_state for t in reply.instance_transitions] == [common_pb2.INSTANCE_STATE_CONNECTED]
    h = await health(guard, "st-1")
    assert (h.state, h.stuck_messages) == (common_pb2.INSTANCE_STATE_CONNECTED, 2)
    assert (await send(guard, "st-1", "after")).state == common_pb2.MESSAGE_STATE_SENT


async def test_a_delivery_between_stuck_messages_resets_the_run(guard: Harness) -> None:
    await guard.register("st-2")
    await guard.connect("st-2")
    first = [await send(guard, "st-2", f"a{i}") for i in range(2)]
    await asyncio.sleep(0.1)
    await guard.app.jobs.sweep_once()
    await guard.webhook(
        {"event": "webhookStatus", "instanceId": "st-2", "messageId": first[0].provider_message_id, "status": "read"}
    )
    [await send(guard, "st-2", f"b{i}") for i in range(2)]
    await asyncio.sleep(0.1)
    await guard.app.jobs.sweep_once()
    h = await health(guard, "st-2")
    assert h.state == common_pb2.INSTANCE_STATE_CONNECTED  # 2 stuck, a read, 2 stuck: never 3 in a row
    assert h.stuck_messages == 3


async def test_reconnection_event_clears_a_stall(guard: Harness) -> None:
    await guard.register("st-3")
    await guard.connect("st-3")
    for i in range(3):
        await send(guard, "st-3", f"c{i}")
    await asyncio.sleep(0.1)
    await guard.app.jobs.sweep_once()
    assert (await health(guard, "st-3")).reason == "DELIVERY_STALLED"
    await guard.connect("st-3", phone="5511999990000")
    h = await health(guard, "st-3")
    assert (h.state, h.reason) == (common_pb2.INSTANCE_STATE_CONNECTED, "PHONE_CONFIRMED")


async def test_messages_left_pending_by_a_crash_are_reconciled_as_outcome_unknown(guard: Harness) -> None:
    from dataclasses import replace
    from datetime import timedelta

    from adapters.persistence.rows import utcnow
    from tests.records import message_record

    await guard.register("cr-1")
    old = utcnow() - timedelta(minutes=10)
    template = message_record(
        instance_id="cr-1",
        content={"content": {"body": "x"}, "reply_to": "", "delay_seconds": 0},
        at=old,
    )
    await guard.repo.insert_message(replace(template, id="crashed", idempotency_key="k1"))
    fresh = utcnow()
    await guard.repo.insert_message(replace(template, id="in-flight", idempotency_key="k2", updated_at=fresh))

    reconciled = await guard.app.jobs.reconcile_once()
    assert [m.id for m in reconciled] == ["crashed"]
    crashed = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id="crashed"))
    assert (crashed.state, crashed.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "OUTCOME_UNKNOWN")
    assert crashed.history[-1].source == "reconciler"
    in_flight = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id="in-flight"))
    assert in_flight.state == common_pb2.MESSAGE_STATE_PENDING
    assert await guard.app.jobs.reconcile_once() == []


@pytest.mark.skipif(not POSTGRES_URL, reason="two sweepers race only on a shared PostgreSQL")
async def test_two_sweepers_on_one_postgres_alert_once_per_message(database_url: str) -> None:
    first = await start_harness(database_url, stuck_after=0.05, sweep_interval=0)
    second = await start_harness(database_url, stuck_after=0.05, sweep_interval=0)
    try:
        await first.register("two-1")
        await first.connect("two-1")
        sent = {(await send(first, "two-1", f"t{i}")).id for i in range(40)}
        await asyncio.sleep(0.1)
        results = await asyncio.gather(*(h.app.jobs.sweep_once() for h in (first, second, first, second)))
        swept = [m.id for batch in results for m in batch]
        assert sorted(swept) == sorted(sent)  # every message once, none twice
        h = await health(first, "two-1")
        assert (h.state, h.reason) == (common_pb2.INSTANCE_STATE_DEGRADED, "DELIVERY_STALLED")
        async with first.repo.engine.connect() as conn:
            from sqlalchemy import text as sql

            changes = (
                await conn.execute(
                    sql(
                        "select count(*) from instance_transitions"
                        " where instance_id='two-1' and reason='DELIVERY_STALLED'"
                    )
                )
            ).scalar_one()
        assert changes == 1
    finally:
        await stop_harness(first)
        await stop_harness(second)


async def test_stuck_counts_follow_every_way_in_and_out_of_stuck(guard: Harness) -> None:
    """The per-instance counters (kept by the database) agree with the stuck rows themselves
    after messages are marked stuck, confirmed late in any order, and re-delivered; on two
    instances, so one instance's changes never move the other's count."""
    from sqlalchemy import func, select

    from adapters.persistence.schema import open_messages

    async def counted_from_rows() -> dict[str, int]:
        stuck = open_messages.c.stuck_at.is_not(None) & open_messages.c.state.in_(["SENT", "QUEUED"])
        query = select(open_messages.c.instance_id, func.count()).where(stuck).group_by(open_messages.c.instance_id)
        async with guard.repo.engine.connect() as conn:
            return {r[0]: r[1] for r in await conn.execute(query)}

    for instance in ("cnt-a", "cnt-b"):
        await guard.register(instance)
        await guard.connect(instance)
    sent = {i: [await send(guard, i, f"{i}-{n}") for n in range(4)] for i in ("cnt-a", "cnt-b")}
    await asyncio.sleep(0.1)
    await guard.app.jobs.sweep_once()
    assert await guard.repo.stuck_counts() == {"cnt-a": 4, "cnt-b": 4} == await counted_from_rows()

    late = sent["cnt-a"]
    for status, msg in (("delivered", late[0]), ("read", late[1]), ("read", late[0]), ("delivered", late[1])):
        body = {"event": "webhookStatus", "instanceId": "cnt-a", "messageId": msg.provider_message_id, "status": status}
        await guard.webhook(body)
        await guard.webhook(body)  # a re-delivery changes nothing
    assert await guard.repo.stuck_counts() == {"cnt-a": 2, "cnt-b": 4} == await counted_from_rows()
    assert (await health(guard, "cnt-a")).stuck_messages == 2
    listed = await guard.health.ListInstances(instance_health_pb2.ListInstancesRequest())
    assert {i.instance_id: i.stuck_messages for i in listed.instances} == {"cnt-a": 2, "cnt-b": 4}


async def test_a_backlog_is_swept_in_short_batches_back_to_back(
    guard: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wapi_guard.core")
    jobs = guard.app.jobs
    jobs.config = replace(jobs.config, sweep_batch=2)
    await guard.register("st-b")
    await guard.connect("st-b")
    sent = [await send(guard, "st-b", f"b{i}") for i in range(5)]
    await asyncio.sleep(0.1)

    first = await guard.app.jobs.sweep_once()
    assert len(first) == 2  # one sweep marks one batch, the oldest first
    assert await jobs.sweep_backlog() == 3  # the rest, in sweeps that follow at once
    assert await jobs.sweep_backlog() == 0
    assert sorted(r.message_id for r in alerts(caplog, "MESSAGE_STUCK")) == sorted(m.id for m in sent)  # type: ignore[attr-defined]
    assert len(alerts(caplog, "DELIVERY_STALLED")) == 1
    assert (await health(guard, "st-b")).reason == "DELIVERY_STALLED"
