"""The per-instance send policy end to end: gRPC, the real W-API client, the simulator on loopback.

A number with no policy sends as before; with one, a send over a budget is refused before the
provider with RESOURCE_EXHAUSTED, the reason and a google.rpc.RetryInfo, and nothing is stored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select

from adapters.persistence.schema import messages
from services.api.wapiguard.v1 import (
    instance_health_pb2,
    optouts_pb2,
    optouts_pb2_grpc,
    send_pb2,
    send_policy_pb2,
    send_policy_pb2_grpc,
)
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import PHONE, Stack, text_request, unbounded
from tests.integration.harness import rich_error

INSTANCE = "7K2PQA-SENDPL-CY0001"


def recipient(i: int) -> str:
    return f"55159811217{i:02d}"


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


async def count_messages(stack: Stack) -> int:
    async with unbounded(stack.app.store).engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(messages))).scalar_one())


def policies(stack: Stack) -> send_policy_pb2_grpc.SendPolicyServiceAsyncStub:
    stub: send_policy_pb2_grpc.SendPolicyServiceAsyncStub = send_policy_pb2_grpc.SendPolicyServiceStub(stack.channel)
    return stub


async def set_policy(stack: Stack, **fields: Any) -> send_policy_pb2.SendPolicyState:
    return await policies(stack).SetSendPolicy(
        send_policy_pb2.SetSendPolicyRequest(instance_id=INSTANCE, policy=send_policy_pb2.SendPolicy(**fields))
    )


async def refused(stack: Stack, to: str, key: str = "") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.SendMessage(text_request(INSTANCE, to=to, key=key))
    return caught.value


async def test_an_established_number_without_a_policy_sends_as_before(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    state = await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id=INSTANCE))
    assert not state.active
    for i in range(25):
        await stack.submit(text_request(INSTANCE, to=recipient(i)))
    assert len(stack.sim.sends(INSTANCE)) == 25


async def test_new_recipient_budget_refuses_with_retry_info_and_stores_nothing(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    state = await set_policy(stack, new_recipients_per_hour=3)
    assert state.active
    for i in range(3):
        await stack.submit(text_request(INSTANCE, to=recipient(i), key=f"k{i}"))
    stored = await count_messages(stack)

    error = await refused(stack, recipient(3), key="k3")
    rich = rich_error(error)
    assert (rich.code, rich.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "NEW_RECIPIENTS_HOURLY")
    assert rich.metadata["limit"] == "3"
    assert 0 < retry_delay(error) <= 3600
    assert rich.localized  # a pt-BR text, like every refusal
    assert len(stack.sim.sends(INSTANCE)) == 3  # the provider never saw it
    assert await count_messages(stack) == stored  # nothing stored, the key is not spent
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{stack.app.http_port}/metrics")).text
    paced = [line for line in body.splitlines() if line.startswith("wapiguard_sends_paced_total{")]
    assert [line.rsplit(" ", 1)[1] for line in paced if 'reason="NEW_RECIPIENTS_HOURLY"' in line] == ["1.0"]

    # A recipient already messaged is not new: it passes. A repeated key replays its outcome.
    again = await stack.submit(text_request(INSTANCE, to=recipient(1), body="segunda"))
    assert again.to == recipient(1)
    replay = await stack.send.SendMessage(text_request(INSTANCE, to=recipient(0), key="k0"))
    assert len(stack.sim.sends(INSTANCE)) == 4
    assert replay.to == recipient(0)

    used = await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id=INSTANCE))
    assert used.new_recipients_this_hour == 3
    assert used.updated_by == "anonymous"

    # Lifting the policy lets the refused send through (same key: it was never spent).
    assert not (await set_policy(stack)).active
    sent = await stack.submit(text_request(INSTANCE, to=recipient(3), key="k3"))
    assert sent.to == recipient(3)


async def test_warm_up_ramp_limits_a_new_number_to_its_first_day_budget(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    state = await set_policy(stack, new_recipients_per_day=100, warmup_start_per_day=4, warmup_days=10)
    assert state.new_recipients_today_budget == 4
    for i in range(4):
        await stack.submit(text_request(INSTANCE, to=recipient(i)))
    rich = rich_error(await refused(stack, recipient(9)))
    assert (rich.reason, rich.metadata["limit"]) == ("NEW_RECIPIENTS_DAILY", "4")
    # Anchored ten days ago the ramp is over: the target applies.
    anchor = send_policy_pb2.SetSendPolicyRequest(
        instance_id=INSTANCE,
        policy=send_policy_pb2.SendPolicy(new_recipients_per_day=100, warmup_start_per_day=4, warmup_days=10),
    )
    anchor.warmup_anchor.FromDatetime(datetime.now(UTC) - timedelta(days=10))
    assert (await policies(stack).SetSendPolicy(anchor)).new_recipients_today_budget == 100
    await stack.submit(text_request(INSTANCE, to=recipient(9)))


async def test_min_interval_and_quiet_hours_say_when(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await set_policy(stack, min_interval_seconds=30, jitter_seconds=10)
    await stack.submit(text_request(INSTANCE, to=recipient(0)))
    error = await refused(stack, recipient(0))
    assert rich_error(error).reason == "SEND_INTERVAL"
    assert 25 < retry_delay(error) <= 40

    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")
    await set_policy(stack, quiet_start=start, quiet_end=end, time_zone="UTC")
    error = await refused(stack, recipient(0))
    assert rich_error(error).reason == "QUIET_HOURS"
    assert 3000 < retry_delay(error) <= 3660


async def test_bad_policies_and_unknown_instances_are_refused_with_reasons(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await set_policy(stack, warmup_days=5, quiet_start="25:00", time_zone="Mars/Base")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await set_policy(stack, warmup_days=5, time_zone="Mars/Base")
    assert set(rich_error(caught.value).violations) == {"policy.warmup_days", "policy.time_zone"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id="NOPE00-NOPE00-NOPE00"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    state = await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id=INSTANCE))
    assert not state.active  # the refused changes left nothing


async def test_a_reply_to_someone_who_wrote_in_is_not_a_new_recipient(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await set_policy(stack, new_recipients_per_hour=1)
    await stack.submit(text_request(INSTANCE, to=recipient(0)))
    assert rich_error(await refused(stack, recipient(5))).reason == "NEW_RECIPIENTS_HOURLY"
    # The customer writes in (W-API's webhookReceived through the bridge): answering them is a reply.
    await stack.sim.emit(INSTANCE, "received", sender=recipient(5), text="Oi, quero saber do pedido")
    reply = await stack.submit(text_request(INSTANCE, to=recipient(5), body="Claro! Seu pedido saiu hoje."))
    assert reply.to == recipient(5)
    # A group's message makes nobody a known contact, and strangers stay new.
    await stack.sim.emit(INSTANCE, "received", sender="120363025555555555@g.us", text="oi grupo")
    assert rich_error(await refused(stack, recipient(6))).reason == "NEW_RECIPIENTS_HOURLY"


async def declare_new(stack: Stack) -> None:
    """RegisterInstance again with `new_number` (an empty token keeps the stored one)."""
    await stack.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id=INSTANCE, new_number=True, skip_probe=True)
    )


async def test_a_number_registered_as_new_gets_the_warm_up_policy(make_stack: StackFactory) -> None:
    stack = await make_stack(
        new_number_min_interval=0, new_number_jitter=0, new_number_new_per_hour=0, new_number_warmup_start=3
    )
    await stack.add_instance(INSTANCE, phone=PHONE)
    await declare_new(stack)
    state = await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id=INSTANCE))
    assert state.active
    assert (state.new_recipients_today_budget, state.policy.new_recipients_per_day, state.policy.warmup_days) == (
        3,
        200,
        14,
    )
    for i in range(3):
        await stack.submit(text_request(INSTANCE, to=recipient(i)))
    assert rich_error(await refused(stack, recipient(3))).reason == "NEW_RECIPIENTS_DAILY"
    assert len(stack.sim.sends(INSTANCE)) == 3


async def test_new_number_defaults_pace_with_jitter_and_never_overwrite_an_operator_policy(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await declare_new(stack)
    await stack.submit(text_request(INSTANCE, to=recipient(0)))
    error = await refused(stack, recipient(1))
    assert rich_error(error).reason == "SEND_INTERVAL"
    assert 1 < retry_delay(error) <= 8  # 3 s floor + up to 5 s jitter (defaults)
    await set_policy(stack, max_per_minute=100)
    await declare_new(stack)
    state = await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id=INSTANCE))
    assert (state.policy.max_per_minute, state.policy.warmup_days) == (100, 0)


async def test_a_retry_is_paced_like_a_send_and_stays_failed_when_refused(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await set_policy(stack, new_recipients_per_hour=1)
    await stack.submit(text_request(INSTANCE, to=recipient(0)))
    # A FAILED message to a new recipient (blocked by an opt-out that is then lifted).
    optouts: optouts_pb2_grpc.OptOutServiceAsyncStub = optouts_pb2_grpc.OptOutServiceStub(stack.channel)
    await optouts.AddOptOut(optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient=recipient(1)))
    failed = rich_error(await refused(stack, recipient(1)))
    assert failed.reason == "RECIPIENT_OPTED_OUT"
    await optouts.RemoveOptOut(optouts_pb2.RemoveOptOutRequest(instance_id=INSTANCE, recipient=recipient(1)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=failed.metadata["message_id"]))
    assert rich_error(caught.value).reason == "NEW_RECIPIENTS_HOURLY"
    assert retry_delay(caught.value) > 0
    stored = await stack.message(failed.metadata["message_id"])
    assert (stored.failure_reason, stored.attempts) == ("RECIPIENT_OPTED_OUT", 1)
    assert len(stack.sim.sends(INSTANCE)) == 1
