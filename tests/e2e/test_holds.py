"""Hold instead of refuse, end to end: gRPC, the real W-API client, the simulator on loopback.

A send with `hold_for` that the send policy paces or an unhealthy instance blocks is stored HELD
and answered (not refused); the dispatcher sends it when it can, exactly once, and the feed shows
HELD → PENDING → SENT; an expired hold ends FAILED with the last reason; a held message can be
cancelled; blocks that waiting cannot clear are refused as always.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from adapters.persistence.schema import change_log
from services.api.wapiguard.v1 import (
    common_pb2,
    instance_health_pb2,
    optouts_pb2,
    optouts_pb2_grpc,
    send_pb2,
    send_policy_pb2,
    send_policy_pb2_grpc,
)
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import CONNECTED, FAILED, PHONE, SENT, Stack, eventually, text_request
from tests.e2e.test_send_policy import retry_delay
from tests.integration.harness import rich_error

HELD = common_pb2.MESSAGE_STATE_HELD
GONE = (SENT, common_pb2.MESSAGE_STATE_DELIVERED, common_pb2.MESSAGE_STATE_READ)
INSTANCE = "7K2PQA-HOLDS0-CY0001"


def recipient(i: int) -> str:
    return f"551598112{i:04d}"


def held_request(to: str, *, seconds: float = 60.0, key: str = "", send_at: datetime | None = None) -> Any:
    request = text_request(INSTANCE, to=to, key=key)
    if seconds:
        request.hold_for.CopyFrom(Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9)))
    if send_at is not None:
        request.send_at.FromDatetime(send_at)
    return request


async def set_policy(stack: Stack, **fields: Any) -> None:
    stub: send_policy_pb2_grpc.SendPolicyServiceAsyncStub = send_policy_pb2_grpc.SendPolicyServiceStub(stack.channel)
    await stub.SetSendPolicy(
        send_policy_pb2.SetSendPolicyRequest(instance_id=INSTANCE, policy=send_policy_pb2.SendPolicy(**fields))
    )


async def holds_metric(stack: Stack, event: str) -> float:
    """`wapiguard_sends_holds_total{event=…}` summed over reasons, as /metrics exports it."""
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{stack.app.http_port}/metrics")).text
    lines = [line for line in body.splitlines() if line.startswith("wapiguard_sends_holds_total{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if f'event="{event}"' in line)


async def feed_states(stack: Stack, message_id: str) -> list[str]:
    """The to_state of every change-log event of the message, in feed order."""
    rows = await stack.rows(change_log, change_log.c.message_id == message_id)
    return [json.loads(r["payload"])["to_state"] for r in sorted(rows, key=lambda r: r["seq"])]


async def wait_sent(stack: Stack, message_id: str) -> common_pb2.Message:
    """SENT or further (the simulator's receipts follow within milliseconds)."""

    async def check() -> common_pb2.Message | None:
        msg = await stack.message(message_id)
        return msg if msg.state in GONE else None

    return await eventually(check, f"message {message_id} sent")


async def test_a_paced_burst_with_a_hold_goes_out_over_time_each_exactly_once(make_stack: StackFactory) -> None:
    # A number registered as new gets the warm-up policy; a fast one here (0.3 s between sends).
    stack = await make_stack(hold_interval=0.05, new_number_min_interval=0.3, new_number_jitter=0)
    await stack.add_instance(INSTANCE, phone=PHONE)
    await stack.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id=INSTANCE, new_number=True, skip_probe=True)
    )
    burst = [await stack.send.SendMessage(held_request(recipient(i), key=f"k{i}")) for i in range(8)]
    states = Counter(m.state for m in burst)
    assert states[HELD] >= 4  # some may go at once; the others are paced and held, not refused
    held = [m for m in burst if m.state == HELD]
    assert all(m.history[-1].reason == "SEND_INTERVAL" for m in held)
    # The same key again answers the same message (held, or sent meanwhile), never a second one.
    again: common_pb2.Message | None = None
    refusal = ""
    try:
        again = await stack.send.SendMessage(held_request(recipient(7), key="k7"))
    except grpc.aio.AioRpcError as caught:  # caught in the few ms of its provider call
        refusal = rich_error(caught).reason
    if again is None:
        assert refusal == "SEND_IN_PROGRESS"
    else:
        assert again.id == burst[7].id
        assert again.state in (HELD, *GONE)

    async def all_sent() -> bool | None:
        got = [await stack.message(m.id) for m in burst]
        return True if all(m.state in GONE for m in got) else None

    await eventually(all_sent, "the held burst sent", timeout=15.0)
    sends = stack.sim.sends(INSTANCE)
    phones = sorted(str(s["body"]["phone"]) for s in sends)
    assert phones == sorted(recipient(i) for i in range(8))  # each exactly once
    times = sorted([(await stack.message(m.id)).sent_at.ToDatetime(tzinfo=UTC) for m in burst])
    assert times[-1] - times[0] >= timedelta(seconds=0.3 * 7 - 0.01)  # paced, not a burst
    for m in held:  # each held message: HELD, maybe held again at dispatch, then out once
        path = await feed_states(stack, m.id)
        assert path[0] == "HELD"
        assert path.count("SENT") == 1
        assert path[path.index("SENT") - 1] == "PENDING"


async def test_a_hold_on_an_incomplete_session_is_released_after_pairing(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, "session_incomplete")
    msg = await stack.send.SendMessage(held_request(recipient(1), key="incomplete"))
    assert (msg.state, msg.history[-1].reason) == (HELD, "SESSION_INCOMPLETE")
    health = await stack.get_health(INSTANCE)
    assert (health.held_messages, [(r.reason, r.count) for r in health.held_reasons]) == (
        1,
        [("SESSION_INCOMPLETE", 1)],
    )
    assert stack.sim.sends(INSTANCE) == []

    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=INSTANCE, phone_number="+55 (15) 98112-1710")
    )
    await stack.sim.type_pairing_code(INSTANCE, answer.pairing_code)
    await stack.wait_health(INSTANCE, lambda h: h.state == CONNECTED, "connected after pairing")
    sent = await wait_sent(stack, msg.id)
    assert len(stack.sim.sends(INSTANCE)) == 1
    assert (await feed_states(stack, sent.id))[:3] == ["HELD", "PENDING", "SENT"]
    assert (await stack.get_health(INSTANCE)).held_messages == 0


async def test_an_expired_hold_ends_failed_with_the_last_reason(make_stack: StackFactory) -> None:
    stack = await make_stack(hold_interval=0.05, hold_recheck=0.1)
    await stack.add_instance(INSTANCE, "session_incomplete")
    msg = await stack.send.SendMessage(held_request(recipient(2), seconds=0.5))
    assert msg.state == HELD
    failed = await stack.wait_state(msg.id, FAILED)
    assert failed.failure_reason == "SESSION_INCOMPLETE"
    assert "hold expired" in failed.failure_detail
    assert await feed_states(stack, msg.id) == ["HELD", "FAILED"]
    assert stack.sim.sends(INSTANCE) == []


async def test_cancel_a_held_message_and_refusals_a_wait_cannot_clear(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, "session_incomplete")
    msg = await stack.send.SendMessage(held_request(recipient(3), key="to-cancel"))
    cancelled = await stack.send.CancelMessage(send_pb2.CancelMessageRequest(message_id=msg.id))
    assert (cancelled.state, cancelled.failure_reason) == (FAILED, "CANCELLED")
    replayed = await stack.refused(held_request(recipient(3), key="to-cancel"))  # the key answers the outcome
    assert (replayed.code, replayed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CANCELLED")
    assert (await holds_metric(stack, "held"), await holds_metric(stack, "cancelled")) == (1.0, 1.0)
    assert await feed_states(stack, msg.id) == ["HELD", "FAILED"]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.CancelMessage(send_pb2.CancelMessageRequest(message_id=msg.id))
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MESSAGE_NOT_HELD")

    # An opt-out cannot clear by waiting: refused at once, hold or not.
    optouts: optouts_pb2_grpc.OptOutServiceAsyncStub = optouts_pb2_grpc.OptOutServiceStub(stack.channel)
    await optouts.AddOptOut(optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient=recipient(4)))
    refused = await stack.refused(held_request(recipient(4)))
    assert refused.reason == "RECIPIENT_OPTED_OUT"
    # Bad values: INVALID_ARGUMENT with the field.
    for bad, field in (
        (held_request(recipient(5), seconds=-5), "hold_for"),
        (held_request(recipient(5), seconds=40 * 86400), "hold_for"),
        (held_request(recipient(5), send_at=datetime.now(UTC) + timedelta(days=45)), "send_at"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.send.SendMessage(bad)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field in rich_error(caught.value).violations
    # Without a hold nothing changed: refused at once with the reason.
    assert (await stack.refused(text_request(INSTANCE, to=recipient(6)))).reason == "SESSION_INCOMPLETE"


async def test_send_at_schedules_and_release_requires_confirmation(make_stack: StackFactory) -> None:
    stack = await make_stack(hold_interval=0.05)
    await stack.add_instance(INSTANCE, phone=PHONE)
    at = datetime.now(UTC) + timedelta(seconds=0.6)
    msg = await stack.send.SendMessage(held_request(recipient(7), seconds=0, send_at=at))
    assert (msg.state, msg.history[-1].reason) == (HELD, "SCHEDULED")
    sent = await wait_sent(stack, msg.id)
    assert sent.sent_at.ToDatetime(tzinfo=UTC) >= at

    # With release_requires_confirmation, held messages wait for ReleaseHeld after a recovery.
    other = "7K2PQA-HOLDS0-CY0002"
    await stack.add_instance(other, "session_incomplete")
    stub: send_policy_pb2_grpc.SendPolicyServiceAsyncStub = send_policy_pb2_grpc.SendPolicyServiceStub(stack.channel)
    await stub.SetSendPolicy(
        send_policy_pb2.SetSendPolicyRequest(
            instance_id=other, policy=send_policy_pb2.SendPolicy(release_requires_confirmation=True)
        )
    )
    request = text_request(other, to=recipient(8))
    request.hold_for.CopyFrom(Duration(seconds=60))
    waiting = await stack.send.SendMessage(request)
    assert waiting.state == HELD
    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=other, phone_number="+55 (15) 98112-1710")
    )
    await stack.sim.type_pairing_code(other, answer.pairing_code)
    await stack.wait_health(other, lambda h: h.state == CONNECTED, "connected after pairing")
    await stack.app.sending.holds.dispatch_once()  # type: ignore[union-attr]
    assert (await stack.message(waiting.id)).state == HELD  # not without the operator
    released = await stack.send.ReleaseHeld(send_pb2.ReleaseHeldRequest(instance_id=other))
    assert released.released == 1
    await wait_sent(stack, waiting.id)
    assert len(stack.sim.sends(other)) == 1


async def test_a_block_that_arrives_while_held_ends_it_failed_at_dispatch(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, "session_incomplete")
    msg = await stack.send.SendMessage(held_request(recipient(9)))
    assert msg.state == HELD
    # The customer opts out while the message waits: the dispatcher's preflight refuses it then.
    optouts: optouts_pb2_grpc.OptOutServiceAsyncStub = optouts_pb2_grpc.OptOutServiceStub(stack.channel)
    await optouts.AddOptOut(optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient=recipient(9)))
    stack.sim.set_behaviour(INSTANCE, "healthy")
    assert (await stack.get_health(INSTANCE, refresh=True)).state == CONNECTED
    failed = await stack.wait_state(msg.id, FAILED)
    assert failed.failure_reason == "RECIPIENT_OPTED_OUT"
    assert await feed_states(stack, msg.id) == ["HELD", "PENDING", "FAILED"]
    assert stack.sim.sends(INSTANCE) == []


async def test_a_hold_the_policy_cannot_clear_before_its_expiry_is_refused_at_once(make_stack: StackFactory) -> None:
    # Day 0 of the warm-up allows 3 new recipients; a 4th cannot go before the next UTC day, long
    # after a 2-minute hold: waiting cannot succeed, so it is not held only to expire.
    stack = await make_stack(
        hold_interval=0.05,
        new_number_min_interval=0.5,
        new_number_jitter=0,
        new_number_new_per_hour=0,
        new_number_warmup_start=3,
        new_number_warmup_target=50,
        new_number_warmup_days=5,
    )
    await stack.add_instance(INSTANCE, phone=PHONE)
    await stack.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id=INSTANCE, new_number=True, skip_probe=True)
    )
    burst = [await stack.send.SendMessage(held_request(recipient(i), seconds=120, key=f"d{i}")) for i in range(5)]

    async def settled() -> list[common_pb2.Message] | None:
        got = [await stack.message(m.id) for m in burst]
        return got if all(m.state not in (HELD, common_pb2.MESSAGE_STATE_PENDING) for m in got) else None

    final = await eventually(settled, "the held burst settled", timeout=15.0)  # not after 2 minutes
    phones = sorted(str(s["body"]["phone"]) for s in stack.sim.sends(INSTANCE))
    failed = [m for m in final if m.state == FAILED]
    assert phones == sorted(m.to for m in final if m.state != FAILED)  # each sent one once
    assert len(phones) == 3  # the day's budget
    assert [m.failure_reason for m in failed] == ["NEW_RECIPIENTS_DAILY"] * 2
    assert all("after the hold's expiry" in m.failure_detail for m in failed)
    for m in failed:
        assert await feed_states(stack, m.id) == ["HELD", "FAILED"]  # never PENDING, never sent
    # A new send with the same 2-minute hold: refused at once, as without a hold, nothing stored
    # (after the interval: the policy checks it first, docs/send-policy.md).
    await asyncio.sleep(0.6)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.SendMessage(held_request(recipient(9), seconds=120, key="late"))
    refusal = rich_error(caught.value)
    assert (refusal.code, refusal.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "NEW_RECIPIENTS_DAILY")
    assert retry_delay(caught.value) > 120
    listed = await stack.send.ListMessages(send_pb2.ListMessagesRequest(instance_id=INSTANCE))
    assert len(listed.messages) == 5
    # A repeated key whose first request was stored replays that message's outcome, not a refusal.
    with pytest.raises(grpc.aio.AioRpcError) as replayed:
        await stack.send.SendMessage(held_request(failed[0].to, seconds=120, key=failed[0].idempotency_key))
    assert replayed.value.code() != grpc.StatusCode.RESOURCE_EXHAUSTED
    assert failed[0].id in (replayed.value.details() or "")
    # A hold that outlasts the budget's reset is held for it.
    await asyncio.sleep(0.6)
    long = await stack.send.SendMessage(held_request(recipient(9), seconds=2 * 86400, key="late"))
    assert (long.state, long.history[-1].reason) == (HELD, "NEW_RECIPIENTS_DAILY")
