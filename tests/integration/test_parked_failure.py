"""A FAILED status that beat its send's commit is parked; applied right after the commit, it keeps
the failure its provider's parser normalized (the columns of a parked event do not hold it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import update

from adapters.persistence.schema import instances
from adapters.zapi import webhooks as zapi_hooks
from services.api.wapiguard.v1 import send_pb2
from statemachine.domain import SendOutcome
from statemachine.events import EventReason
from tests.integration.harness import Harness, start_harness, stop_harness

PID = "3EB0PARKEDFAIL01"


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def test_a_parked_failure_keeps_its_normalized_reason(guard: Harness) -> None:
    await guard.register("PF-1")
    await guard.connect("PF-1")
    guard.provider.send_result = lambda _m: SendOutcome(provider_message_id=PID)
    guard.provider.send_gate = asyncio.Event()
    sending = asyncio.ensure_future(
        guard.send.SendMessage(
            send_pb2.SendMessageRequest(
                instance_id="PF-1", to="5511900000000", idempotency_key="k1", text=send_pb2.TextContent(body="Oi")
            )
        )
    )
    for _ in range(200):  # bounded: the send is stored PENDING, then waits at the provider
        if guard.provider.sends:
            break
        await asyncio.sleep(0.01)
    # The instance now lives on Z-API (as stored); its send webhook says the number does not exist,
    # before the send's answer was recorded: parked.
    async with guard.repo.engine.begin() as conn:
        await conn.execute(update(instances).where(instances.c.id == "PF-1").values(provider="ZAPI"))
    body: dict[str, object] = {
        "type": "DeliveryCallback",
        "instanceId": "PF-1",
        "phone": "5511900000000",
        "messageId": PID,
    }
    body |= {"zaapId": "Z" + PID, "momment": 1_749_132_400_000, "error": "Phone number does not exist"}
    parked = await guard.app.ingest.ingest(json.dumps(body).encode(), {}, parse=zapi_hooks.parse)
    assert parked.reason == EventReason.UNKNOWN_MESSAGE
    guard.provider.send_gate.set()
    # The SENT commit applies the parked status right after it: the send answers with its failure.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sending
    assert "NOT_ON_WHATSAPP" in str(refused.value.details())
    [msg] = [m for m in (await guard.app.messages.list_messages(instance_id="PF-1"))[0]]
    assert (msg.state.value, msg.failure_reason, msg.failure_detail) == (
        "FAILED",
        "NOT_ON_WHATSAPP",
        "Phone number does not exist",
    )
