"""The send policy's life end to end (gRPC, the real W-API client, the simulator on loopback): the
warm-up ramp starts at the number's first connection and a new phone identity restarts it; every
change is audited and listed; instances naming one opt-out list share it; InstanceHealth shows the
budgets used and left and the opt-out count."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.api.wapiguard.v1 import (
    instance_health_pb2,
    optouts_pb2,
    optouts_pb2_grpc,
    send_policy_pb2,
)
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import PHONE, Stack, eventually, text_request
from tests.e2e.test_send_policy import policies, refused, retry_delay
from tests.integration.harness import rich_error

INSTANCE = "7K2PQA-SENDPL-CY0001"  # the instance test_send_policy's helpers talk to
OTHER = "7K2PQA-SENDPL-CY0002"
NEW_PHONE = "5511988887777"


def recipient(i: int) -> str:
    return f"55159811218{i:02d}"


async def state(stack: Stack, instance_id: str = INSTANCE) -> send_policy_pb2.SendPolicyState:
    return await policies(stack).GetSendPolicy(send_policy_pb2.GetSendPolicyRequest(instance_id=instance_id))


async def changes(stack: Stack, instance_id: str = INSTANCE) -> list[send_policy_pb2.SendPolicyChange]:
    answer = await policies(stack).ListSendPolicyChanges(
        send_policy_pb2.ListSendPolicyChangesRequest(instance_id=instance_id)
    )
    return list(answer.changes)


async def test_the_ramp_starts_at_the_first_connection_and_a_new_phone_restarts_it(make_stack: StackFactory) -> None:
    stack = await make_stack(
        new_number_min_interval=0, new_number_jitter=0, new_number_new_per_hour=0, new_number_warmup_start=2
    )
    # Registered as new before it is paired: the ramp waits for its first phone.
    stack.sim.add_instance(INSTANCE, "tok-1", behaviour="disconnected", phone=PHONE)
    await stack.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id=INSTANCE, token="tok-1", new_number=True)
    )
    waiting = await state(stack)
    assert (waiting.active, waiting.warmup_phone) == (True, "")
    stack.sim.set_behaviour(INSTANCE, "healthy")
    await shows_phone(stack, PHONE)
    first = await eventually(lambda: _phone_is(stack, PHONE), "the ramp anchored on the first phone")
    assert first.budgets.warmup_day == 0
    assert first.budgets.new_recipients_today_budget == 2
    # Ten days into the ramp (an operator moves the anchor), the budget has climbed.
    ten_days_ago = Timestamp()
    ten_days_ago.FromDatetime(datetime.now(UTC) - timedelta(days=10))
    moved = await policies(stack).SetSendPolicy(
        send_policy_pb2.SetSendPolicyRequest(instance_id=INSTANCE, policy=first.policy, warmup_anchor=ten_days_ago)
    )
    assert (moved.budgets.warmup_day, moved.budgets.new_recipients_today_budget) == (10, 2 + (200 - 2) * 10 // 14)
    # The instance now shows another phone: a new number on it, the ramp starts again.
    stack.sim._instance(INSTANCE).phone = NEW_PHONE
    await shows_phone(stack, NEW_PHONE)
    restarted = await eventually(lambda: _phone_is(stack, NEW_PHONE), "the ramp restarted on the new phone")
    assert (restarted.budgets.warmup_day, restarted.budgets.new_recipients_today_budget) == (0, 2)
    for i in range(2):
        await stack.submit(text_request(INSTANCE, to=recipient(i)))
    error = await refused(stack, recipient(2))
    assert rich_error(error).reason == "NEW_RECIPIENTS_DAILY"
    assert retry_delay(error) > 0
    kinds = [c.change for c in await changes(stack)]
    assert kinds == ["WARMUP_RESTART", "SET", "FIRST_CONNECTION", "NEW_NUMBER"]


async def shows_phone(stack: Stack, phone: str) -> None:
    async def probed() -> bool | None:
        return (await stack.get_health(INSTANCE, refresh=True)).phone_number == phone or None

    await eventually(probed, f"the instance connected with {phone}")


async def _phone_is(stack: Stack, phone: str) -> send_policy_pb2.SendPolicyState | None:
    current = await state(stack)
    return current if current.warmup_phone == phone else None


async def test_an_established_number_is_not_put_on_a_ramp_by_connecting(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    seen = await eventually(lambda: _phone_is(stack, PHONE), "the phone recorded")
    assert not seen.active
    for i in range(30):
        await stack.submit(text_request(INSTANCE, to=recipient(i)))
    assert len(stack.sim.sends(INSTANCE)) == 30


async def test_every_policy_change_is_audited_with_who_and_before_after(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await eventually(lambda: _phone_is(stack, PHONE), "the phone recorded")
    for cap in (10, 20):
        await policies(stack).SetSendPolicy(
            send_policy_pb2.SetSendPolicyRequest(
                instance_id=INSTANCE, policy=send_policy_pb2.SendPolicy(max_per_minute=cap)
            )
        )
    newest, older, seen = await changes(stack)
    assert (newest.change, older.change, seen.change) == ("SET", "SET", "PHONE_SEEN")
    assert newest.by == older.by != ""
    assert json.loads(newest.before_json)["max_per_minute"] == 10
    assert json.loads(newest.after_json)["max_per_minute"] == 20
    assert json.loads(older.before_json)["max_per_minute"] == 0
    assert newest.at.ToDatetime() >= older.at.ToDatetime()
    page = await policies(stack).ListSendPolicyChanges(
        send_policy_pb2.ListSendPolicyChangesRequest(instance_id=INSTANCE, page_size=2)
    )
    rest = await policies(stack).ListSendPolicyChanges(
        send_policy_pb2.ListSendPolicyChangesRequest(instance_id=INSTANCE, page_token=page.next_page_token)
    )
    assert [c.change for c in [*page.changes, *rest.changes]] == ["SET", "SET", "PHONE_SEEN"]


async def test_instances_naming_one_list_share_its_opt_outs(stack: Stack) -> None:
    for instance_id in (INSTANCE, OTHER):
        await stack.add_instance(instance_id, phone=PHONE)
        await policies(stack).SetSendPolicy(
            send_policy_pb2.SetSendPolicyRequest(
                instance_id=instance_id, policy=send_policy_pb2.SendPolicy(), optout_list="loja-centro"
            )
        )
    opt: optouts_pb2_grpc.OptOutServiceAsyncStub = optouts_pb2_grpc.OptOutServiceStub(stack.channel)
    await opt.AddOptOut(optouts_pb2.AddOptOutRequest(instance_id=INSTANCE, recipient=recipient(1), note="pediu"))
    blocked = await stack.refused(text_request(OTHER, to=recipient(1)))
    assert blocked.reason == "RECIPIENT_OPTED_OUT"
    assert stack.sim.sends(OTHER) == []
    listed = await opt.ListOptOuts(optouts_pb2.ListOptOutsRequest(instance_id=OTHER))
    assert [(o.instance_id, o.recipient) for o in listed.opt_outs] == [(OTHER, recipient(1))]
    health = await stack.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=OTHER))
    assert (health.opt_outs, health.optout_list) == (1, "loja-centro")
    # An instance on its own list is not affected.
    await stack.add_instance("7K2PQA-SENDPL-CY0003", phone=PHONE)
    await stack.submit(text_request("7K2PQA-SENDPL-CY0003", to=recipient(1)))
    # Removed through the other instance: it is off the shared list for both.
    await opt.RemoveOptOut(optouts_pb2.RemoveOptOutRequest(instance_id=OTHER, recipient=recipient(1), note="ok"))
    await stack.submit(text_request(INSTANCE, to=recipient(1)))


async def test_a_bad_list_name_is_refused_with_the_field(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await policies(stack).SetSendPolicy(
            send_policy_pb2.SetSendPolicyRequest(
                instance_id=INSTANCE, policy=send_policy_pb2.SendPolicy(), optout_list="a list!"
            )
        )
    rich = rich_error(caught.value)
    assert (rich.code, list(rich.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["optout_list"])


async def test_instance_health_shows_budgets_used_and_left(stack: Stack) -> None:
    await stack.add_instance(INSTANCE, phone=PHONE)
    await policies(stack).SetSendPolicy(
        send_policy_pb2.SetSendPolicyRequest(
            instance_id=INSTANCE,
            policy=send_policy_pb2.SendPolicy(max_per_minute=40, new_recipients_per_hour=5, new_recipients_per_day=9),
        )
    )
    for i in range(3):
        await stack.submit(text_request(INSTANCE, to=recipient(i)))
    health = await stack.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=INSTANCE))
    b = health.send_budgets
    assert b.policy_active
    assert (b.new_recipients_this_hour, b.new_recipients_left_this_hour) == (3, 2)
    assert (b.new_recipients_today, b.new_recipients_today_budget, b.new_recipients_left_today) == (3, 9, 6)
    # Sends this minute count the slice this replica reserved (40 // 8 = 5): 3 spent, 2 held.
    assert (b.max_per_minute, b.sends_this_minute, b.sends_left_this_minute) == (40, 5, 35)
    listed = await stack.health.ListInstances(instance_health_pb2.ListInstancesRequest())
    assert [i.send_budgets.new_recipients_today for i in listed.instances] == [3]


async def test_a_first_pairing_through_wapi_guard_gets_the_warm_up_ramp(stack: Stack) -> None:
    """An instance never seen with a session, paired with a code asked for here: a new number,
    so it gets the new-number policy anchored on its phone. (A broken session paired again is an
    established number coming back: test_recovery's pairing loop sends unpaced.)"""
    stack.sim.add_instance(INSTANCE, "tok-1", behaviour="disconnected", phone=PHONE)
    await stack.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id=INSTANCE, token="tok-1")
    )
    assert not (await state(stack)).active
    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=INSTANCE, phone_number=PHONE)
    )
    await stack.sim.type_pairing_code(INSTANCE, answer.pairing_code)
    paired = await eventually(lambda: _phone_is(stack, PHONE), "the ramp anchored on the paired phone")
    assert paired.active
    assert (paired.budgets.warmup_day, paired.budgets.warmup_days) == (0, paired.policy.warmup_days)
    assert paired.policy.warmup_days > 0
    assert [c.change for c in await changes(stack)] == ["FIRST_PAIRING"]
    await stack.submit(text_request(INSTANCE, to=recipient(0)))
    assert rich_error(await refused(stack, recipient(1))).reason == "SEND_INTERVAL"  # the default pacing
