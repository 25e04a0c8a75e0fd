"""The operator's recovery loop end to end: simulator + real App over loopback, driven through gRPC.

session incomplete -> blocked -> pairing code -> typed on the phone -> connected with phone ->
sends flow again; restarts; W-API's webhooks pointed at the bridge on registration and again
after a reconnection; missed events replayed from W-API's webhook log exactly once; a queued
answer never reported as SENT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json

import grpc
import pytest
from sqlalchemy import func, select

from adapters.persistence.schema import events, instance_transitions
from adapters.wapi.contract import WEBHOOK_KINDS
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2
from services.bootstrap import http_surface
from services.http.bridge import start_bridge
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import (
    CONNECTED,
    DELIVERED,
    DISCONNECTED,
    FAILED,
    PHONE,
    READ,
    SENT,
    SESSION_INCOMPLETE,
    Stack,
    eventually,
    text_request,
    unbounded,
)
from tests.integration.harness import rich_error

QUEUED = common_pb2.MESSAGE_STATE_QUEUED
PAIR_PHONE = "5515981121710"


def req(instance_id: str) -> instance_health_pb2.InstanceRequest:
    return instance_health_pb2.InstanceRequest(instance_id=instance_id)


async def with_public_url(make_stack: StackFactory, **overrides: object) -> Stack:
    """A stack whose --public-url is its own bridge (known only once the bridge has a port)."""
    stack = await make_stack(**overrides)
    recovery = stack.app.recovery
    assert recovery is not None
    recovery.config = dataclasses.replace(recovery.config, public_url=stack.bridge_url)
    instances = stack.app.instances  # the next steps name that URL too
    instances.config = dataclasses.replace(instances.config, public_url=stack.bridge_url)
    return stack


async def test_pairing_code_loop_takes_an_incomplete_session_back_to_sending(stack: Stack) -> None:
    instance = "LITE-4IW93E-MGVYDW"
    h = await stack.add_instance(instance, "session_incomplete")
    assert (h.state, h.can_send) == (SESSION_INCOMPLETE, False)
    assert "código de pareamento" in h.next_step
    refused = await stack.refused(text_request(instance, key="before"))
    assert refused.reason == "SESSION_INCOMPLETE"

    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=instance, phone_number="+55 (15) 98112-1710")
    )
    assert answer.pairing_code
    assert not answer.already_connected
    assert answer.pairing_code in answer.next_step
    assert (answer.health.state, answer.health.reason) == (DISCONNECTED, "PAIRING_IN_PROGRESS")
    pairing = [r for r in stack.sim.requests if r.path == "/instance/pairing-code"]
    assert [r.query["phoneNumber"] for r in pairing] == [PAIR_PHONE]

    # While pairing, a probe that still says "connected, no phone" keeps the pairing visible.
    h = await stack.get_health(instance, refresh=True)
    assert (h.state, h.reason) == (DISCONNECTED, "PAIRING_IN_PROGRESS")
    blocked = await stack.refused(text_request(instance, key="during"))
    assert blocked.reason == "PAIRING_IN_PROGRESS"

    await stack.sim.type_pairing_code(instance, answer.pairing_code)
    h = await stack.wait_health(instance, lambda h: h.state == CONNECTED, "connected after pairing")
    assert (h.phone_number, h.can_send, h.next_step) == (PAIR_PHONE, True, "")

    sent = await stack.submit(text_request(instance, key="after"))
    assert sent.state == SENT
    await stack.wait_state(sent.id, READ)

    actions = await stack.health.ListRecoveryActions(req(instance))
    assert [(a.action, a.requested_by, a.outcome) for a in actions.actions] == [("pairing_code", "anonymous", "OK")]
    sources = await stack.rows(instance_transitions, instance_transitions.c.instance_id == instance)
    assert ("PAIRING_IN_PROGRESS", "operator:anonymous") in {(r["reason"], r["source"]) for r in sources}
    # The blocked message can now be retried (not replayed with the same key).
    retried = await stack.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=refused.stored.id))  # type: ignore[union-attr]
    assert retried.state == SENT
    await stack.audit()


async def test_pairing_code_needs_a_real_phone_number(stack: Stack) -> None:
    instance = "LITE-4IW93E-MGVYDW"
    await stack.add_instance(instance, "session_incomplete")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.health.RequestPairingCode(
            instance_health_pb2.RequestPairingCodeRequest(instance_id=instance, phone_number="12ab")
        )
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert "phone_number" in rich.violations
    assert not [r for r in stack.sim.requests if r.path == "/instance/pairing-code"]


async def test_qr_code_is_png_and_text(stack: Stack) -> None:
    instance = "QR-ZTS923-GEAY6V"
    await stack.add_instance(instance, "disconnected")
    answer = await stack.health.GetQrCode(req(instance))
    assert answer.png.startswith(b"\x89PNG\r\n\x1a\n")
    assert answer.base64.startswith("data:image/png;base64,")
    assert (answer.health.state, answer.health.reason) == (DISCONNECTED, "PAIRING_IN_PROGRESS")
    assert "QR" in answer.next_step


async def test_restart_is_visible_and_clears_a_stall_once_reconnected(make_stack: StackFactory) -> None:
    stack = await make_stack(stuck_after=0.2, stall_threshold=2)
    instance = "STALL-ZTS923-GEAY6V"
    await stack.add_instance(instance, "silent_stall")
    for i in range(2):
        await stack.submit(text_request(instance, body=f"#{i}", key=f"s-{i}"))
    await asyncio.sleep(0.3)
    await stack.app.jobs.sweep_once()
    assert (await stack.get_health(instance)).reason == "DELIVERY_STALLED"

    stack.sim.restart_after = 0.3
    answer = await stack.health.RestartInstance(req(instance))
    assert (answer.health.state, answer.health.reason) == (DISCONNECTED, "RESTARTING")
    assert answer.provider_message
    assert (await stack.refused(text_request(instance, key="mid"))).reason == "RESTARTING"
    h = await stack.wait_health(instance, lambda h: h.state == CONNECTED, "reconnected after restart")
    assert (h.reason, h.phone_number, h.can_send) == ("PHONE_CONFIRMED", PHONE, True)


async def test_an_operator_clears_a_stall_audited_and_the_stall_s_own_stuck_messages_do_not_restall_it(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(stuck_after=0.2, stall_threshold=2, recovery_limit=1)
    instance = "CLEAR-ZTS923-GEAY6V"
    await stack.add_instance(instance, "silent_stall")
    for i in range(2):
        await stack.submit(text_request(instance, body=f"#{i}", key=f"s-{i}"))
    await asyncio.sleep(0.3)
    await stack.app.jobs.sweep_once()
    assert (await stack.get_health(instance)).reason == "DELIVERY_STALLED"
    # A probe that merely says "connected" never clears it.
    h = await stack.get_health(instance, refresh=True)
    assert (h.reason, h.can_send) == ("DELIVERY_STALLED", False)

    stack.sim.set_behaviour(instance, "healthy")  # the operator checked the phone by hand
    answer = await stack.health.ClearStall(req(instance))
    assert answer.cleared
    assert (answer.health.state, answer.health.reason, answer.health.can_send) == (CONNECTED, "PHONE_CONFIRMED", True)
    await stack.app.jobs.sweep_once()  # the two messages stuck during the stall are not a new run
    assert (await stack.get_health(instance)).state == CONNECTED
    sent = await stack.submit(text_request(instance, key="after"))
    await stack.wait_state(sent.id, READ)

    again = await stack.health.ClearStall(req(instance))  # nothing to clear: no change, no error
    assert (again.cleared, again.health.state) == (False, CONNECTED)
    actions = await stack.health.ListRecoveryActions(req(instance))
    assert [(a.action, a.requested_by, a.outcome) for a in actions.actions] == [
        ("clear_stall", "anonymous", "OK"),
        ("clear_stall", "anonymous", "OK"),
    ]
    assert "NOT_STALLED" in actions.actions[0].detail
    sources = await stack.rows(instance_transitions, instance_transitions.c.instance_id == instance)
    cleared = [r for r in sources if r["source"] == "operator:anonymous"]
    assert [(r["from_state"], r["to_state"]) for r in cleared] == [("DEGRADED", "CONNECTED")]
    await stack.audit()
    # Clears reach no provider: they do not use up the recovery rate limit (here one action).
    restarted = await stack.health.RestartInstance(req(instance))
    assert restarted.health.reason == "RESTARTING"


async def test_one_action_at_a_time_and_rate_limited(make_stack: StackFactory) -> None:
    stack = await make_stack(recovery_limit=2)
    instance = "RATE-ZTS923-GEAY6V"
    await stack.add_instance(instance, "healthy")
    await stack.health.RestartInstance(req(instance))
    await stack.health.RestartInstance(req(instance))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.health.RestartInstance(req(instance))
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RECOVERY_RATE_LIMITED")
    assert stack.sim.requests
    assert len([r for r in stack.sim.requests if r.path == "/instance/restart"]) == 2


async def test_webhooks_set_on_registration_and_set_again_after_a_reconnection(make_stack: StackFactory) -> None:
    stack = await with_public_url(make_stack)
    stack.sim.set_webhook_url(None)  # only what wapi-guard configures at W-API is posted
    instance = "HOOK-ZTS923-GEAY6V"
    h = await stack.add_instance(instance, "session_incomplete")
    assert (h.webhooks_configured, h.webhooks_state) == (True, "CONFIGURED")
    assert stack.sim.configured_webhooks(instance) == dict.fromkeys(WEBHOOK_KINDS, stack.webhook_url)

    check = await stack.health.CheckWebhooks(req(instance))
    assert check.configured
    assert stack.secret not in check.url
    assert "***" in check.url

    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=instance, phone_number=PAIR_PHONE)
    )
    await stack.sim.type_pairing_code(instance, answer.pairing_code)  # the new session forgot the URLs
    assert stack.sim.configured_webhooks(instance) == {}
    h = await stack.get_health(instance, refresh=True)
    assert h.state == CONNECTED

    async def re_set() -> dict[str, str] | None:
        urls = stack.sim.configured_webhooks(instance)
        return urls if len(urls) == len(WEBHOOK_KINDS) else None

    assert await eventually(re_set, "webhooks re-applied") == dict.fromkeys(WEBHOOK_KINDS, stack.webhook_url)

    async def audited() -> list[str] | None:  # the audit row follows W-API's read-back
        actions = await stack.health.ListRecoveryActions(req(instance))
        who = [a.requested_by for a in actions.actions if a.action == "configure_webhooks"]
        return who if len(who) == 2 else None

    assert await eventually(audited, "re-apply audited") == ["reconnection", "registration"]


async def test_configure_webhooks_without_public_url_is_refused(stack: Stack) -> None:
    await stack.add_instance("HOOK-1", "healthy")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.health.ConfigureWebhooks(req("HOOK-1"))
    assert rich_error(caught.value).reason == "PUBLIC_URL_NOT_CONFIGURED"


async def test_missed_events_are_replayed_from_the_webhook_log_exactly_once(stack: Stack) -> None:
    instance = "LOG-ZTS923-GEAY6V"
    await stack.add_instance(instance, "healthy")
    stack.sim.set_acks(instance, "none")  # the counts below are receipts; acks are another test's subject
    before = await stack.submit(text_request(instance, key="before-downtime"))
    await stack.wait_state(before.id, READ)
    await stack.sim.emit(instance, "received", text="recebida antes da queda")  # stored: a duplicate later

    # The bridge goes down; W-API keeps posting (and logging) meanwhile.
    runner = stack.app.bridge_runner
    await runner.cleanup()
    stack.sim.delivered_after, stack.sim.read_after = 0.01, 0.02
    missed = [await stack.submit(text_request(instance, body=f"#{i}", key=f"down-{i}")) for i in range(3)]
    await stack.sim.emit(instance, "received", text="oi, tudo bem?")
    await stack.sim.emit(instance, "disconnected")

    async def failed_posts() -> int | None:
        errors = [p for p in stack.sim.webhook_posts if p["error"]]
        return len(errors) if len(errors) >= 8 else None  # 3 x (delivered, read) + received + disconnected

    assert await eventually(failed_posts, "posts while the bridge is down") == 8
    assert all(m.state == SENT for m in [await stack.message(m.id) for m in missed])

    # The bridge comes back (a new port); nothing arrives by itself for what was missed.
    runner, port = await start_bridge(stack.app.settings, http_surface(stack.app))
    stack.app.bridge_runner = runner
    stack.app.stack.push_async_callback(runner.cleanup)
    stack.app.http_port = port
    stack.sim.set_webhook_url(stack.webhook_url)

    first = await stack.health.ReconcileEvents(instance_health_pb2.ReconcileEventsRequest(instance_id=instance))
    [result] = first.instances
    assert result.error == ""
    assert result.applied == 8
    assert result.fetched == len(stack.sim.webhook_log(instance))
    assert result.duplicates == result.fetched - 8
    for m in missed:
        assert (await stack.message(m.id)).state == READ
    h = await stack.get_health(instance)
    assert (h.state, h.reason) == (DISCONNECTED, "INSTANCE_DISCONNECTED")

    again = await stack.health.ReconcileEvents(instance_health_pb2.ReconcileEventsRequest(instance_id=instance))
    assert (again.instances[0].applied, again.instances[0].duplicates) == (0, result.fetched)
    repo = unbounded(stack.app.store)
    async with repo.engine.connect() as conn:
        stored = (
            await conn.execute(select(func.count()).select_from(events).where(events.c.instance_id == instance))
        ).scalar_one()
    logged = stack.sim.webhook_log(instance)
    assert stored == len({json.dumps(e["body"], sort_keys=True) for e in logged})


async def test_a_queued_answer_is_never_sent_and_gets_stuck(make_stack: StackFactory) -> None:
    stack = await make_stack(stuck_after=0.2)
    instance = "QUEUE-ZTS923-GEAY6V"
    await stack.add_instance(instance, "accepted_queued")
    msg = await stack.send.SendMessage(text_request(instance, key="queued"))
    assert msg.state == QUEUED
    assert msg.provider_message_id == ""
    assert msg.queue_id
    assert [h.to_state for h in msg.history if h.applied][-1] == QUEUED
    await asyncio.sleep(0.3)
    stuck = await stack.app.jobs.sweep_once()
    assert [m.id for m in stuck] == [msg.id]
    listed = await stack.send.ListMessages(send_pb2.ListMessagesRequest(instance_id=instance, stuck_only=True))
    assert [(m.id, m.state, m.stuck) for m in listed.messages] == [(msg.id, QUEUED, True)]
    stored = await stack.message(msg.id)
    assert stored.state not in (SENT, DELIVERED, READ, FAILED)


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The google.rpc.RetryInfo wait of a refusal, as a client reads it."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.RetryInfo()
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


async def test_automatic_webhook_set_ups_do_not_use_up_the_operator_s_recovery_budget(
    make_stack: StackFactory,
) -> None:
    stack = await with_public_url(make_stack, recovery_limit=1, recovery_window=600)
    instance = "BUDGET-ZTS923-GEAY6V"
    await stack.add_instance(instance, "disconnected")  # registration configures the webhooks
    recovery = stack.app.recovery
    assert recovery is not None
    await recovery.configure_webhooks(instance, who="reconnection")  # what a reconnection does
    actions = await stack.health.ListRecoveryActions(req(instance))
    assert [a.requested_by for a in actions.actions] == ["reconnection", "registration"]

    answer = await stack.health.GetQrCode(req(instance))  # the operator's one action of the window
    assert answer.health.reason == "PAIRING_IN_PROGRESS"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.health.GetQrCode(req(instance))
    rich = rich_error(caught.value)
    assert (rich.code, rich.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RECOVERY_RATE_LIMITED")
    wait = retry_delay(caught.value)
    assert wait is not None
    assert 590 < wait <= 600


async def test_two_replicas_asked_at_once_never_pass_the_recovery_limit(make_stack: StackFactory) -> None:
    first = await make_stack(recovery_limit=5)
    # Another replica: the same database and the same W-API.
    second = await make_stack(recovery_limit=5, wapi_base_url=first.sim.base_url)
    instance = "RACE-ZTS923-GEAY6V"
    await first.add_instance(instance, "healthy")
    for _ in range(4):
        await first.health.RestartInstance(req(instance))

    async def restart(stack: Stack) -> str:
        try:
            await stack.health.RestartInstance(req(instance))
        except grpc.aio.AioRpcError as error:
            return rich_error(error).reason
        return "OK"

    for _trial in range(2):
        outcomes = await asyncio.gather(restart(first), restart(second))
        assert sorted(outcomes) in (["OK", "RECOVERY_RATE_LIMITED"], ["RECOVERY_RATE_LIMITED"] * 2)
    restarts = [r for r in first.sim.requests if r.path == "/instance/restart"]
    assert len(restarts) == 5
    actions = await first.health.ListRecoveryActions(req(instance))
    assert len([a for a in actions.actions if a.action == "restart"]) == 5


def status_probes(stack: Stack) -> int:
    return len([r for r in stack.sim.requests if r.path == "/instance/status-instance"])


async def test_after_a_pairing_the_instance_is_connected_without_waiting_for_the_periodic_probe(
    stack: Stack,
) -> None:
    """No connection webhook reaches the bridge and the periodic probe is off: only the short
    probes right after the recovery action can see the new session (default interval)."""
    stack.sim.set_webhook_url(None)
    instance = "FOLLOW-ZTS923-GEAY6V"
    await stack.add_instance(instance, "session_incomplete")
    answer = await stack.health.RequestPairingCode(
        instance_health_pb2.RequestPairingCodeRequest(instance_id=instance, phone_number=PAIR_PHONE)
    )
    assert answer.health.reason == "PAIRING_IN_PROGRESS"
    await stack.sim.type_pairing_code(instance, answer.pairing_code)

    async def connected() -> common_pb2.InstanceHealth | None:
        h = await stack.get_health(instance)  # stored health, no refresh
        return h if h.state == CONNECTED else None

    h = await eventually(connected, "connected by the follow-up probes", timeout=8)
    assert (h.phone_number, h.can_send) == (PAIR_PHONE, True)
    sources = await stack.rows(instance_transitions, instance_transitions.c.instance_id == instance)
    assert sources[-1]["source"] == "recovery_probe"
    probes = status_probes(stack)
    await asyncio.sleep(0.5)
    assert status_probes(stack) == probes  # connected: the follow-up stops


async def test_follow_up_probes_are_bounded_when_the_phone_never_pairs(make_stack: StackFactory) -> None:
    stack = await make_stack(recovery_probe_interval=0.1, recovery_probe_for=0.6)
    instance = "FOLLOW-4IW93E-MGVYDW"
    await stack.add_instance(instance, "disconnected")
    before = status_probes(stack)
    await stack.health.GetQrCode(req(instance))
    await asyncio.sleep(1.2)
    made = status_probes(stack) - before
    assert 2 <= made <= 7
    await asyncio.sleep(0.5)
    assert status_probes(stack) - before == made  # the window ended: no more probes
    assert (await stack.get_health(instance)).reason == "PAIRING_IN_PROGRESS"
