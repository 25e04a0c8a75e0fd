"""InstanceHealthService, grpc.health.v1 and reflection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.api.wapiguard.v1 import common_pb2, instance_health_pb2
from statemachine.domain import ProbeOutcome, Reason
from tests.integration.harness import Harness, rich_error

TOKEN = "wapi-token-DO-NOT-LEAK-9f8e7d"


async def test_registration_probes_and_never_connects_without_phone(guard: Harness) -> None:
    guard.provider.probe_result = lambda _i: ProbeOutcome(connected=True, phone=None)
    reply = await guard.register("LITE-4IW93E-MGVYDW", token=TOKEN, plan=common_pb2.PLAN_LITE, probe=True)
    assert reply.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE
    assert reply.plan == common_pb2.PLAN_LITE
    assert reply.checked_at.seconds > 0
    assert reply.reason_message.startswith("Instância conectada sem sessão válida")
    assert TOKEN.encode() not in reply.SerializeToString()

    guard.provider.probe_result = lambda _i: ProbeOutcome(connected=True, phone="5511999990000")
    again = await guard.register("Aventura", token=TOKEN, probe=True)
    assert (again.state, again.phone_number, again.can_send) == (
        common_pb2.INSTANCE_STATE_CONNECTED,
        "5511999990000",
        True,
    )


@pytest.mark.parametrize(
    ("outcome", "state", "reason"),
    [
        (ProbeOutcome(connected=False), common_pb2.INSTANCE_STATE_DISCONNECTED, "INSTANCE_DISCONNECTED"),
        (
            ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY),
            common_pb2.INSTANCE_STATE_DEGRADED,
            "TIMEOUT_OR_GATEWAY",
        ),
        (
            ProbeOutcome(connected=None, failure=Reason.TOKEN_INVALID),
            common_pb2.INSTANCE_STATE_DISCONNECTED,
            "TOKEN_INVALID",
        ),
        (
            ProbeOutcome(connected=None, failure=Reason.INSTANCE_NOT_FOUND),
            common_pb2.INSTANCE_STATE_DISCONNECTED,
            "INSTANCE_NOT_FOUND",
        ),
    ],
)
async def test_refresh_maps_every_probe_outcome(guard: Harness, outcome: ProbeOutcome, state: int, reason: str) -> None:
    await guard.register("p-1")
    guard.provider.probe_result = lambda _i: outcome
    reply = await guard.health.GetInstanceHealth(
        instance_health_pb2.GetInstanceHealthRequest(instance_id="p-1", refresh=True)
    )
    assert (reply.state, reply.reason) == (state, reason)


async def test_register_requires_token_and_valid_id(guard: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.register("new-1", token="")
    assert rich_error(caught.value).violations == {"token": "required on first registration"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.register("bad id with spaces")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_reregistration_keeps_token_and_state(guard: Harness) -> None:
    await guard.register("keep-1", token=TOKEN)
    await guard.connect("keep-1")
    reply = await guard.health.RegisterInstance(
        instance_health_pb2.RegisterInstanceRequest(instance_id="keep-1", name="Renamed", skip_probe=True)
    )
    assert (reply.name, reply.state) == ("Renamed", common_pb2.INSTANCE_STATE_CONNECTED)
    found = await guard.repo.get_instance("keep-1")
    assert found[1] == TOKEN


async def test_list_instances_refresh_probes_all(guard: Harness) -> None:
    for name in ("a-1", "a-2", "a-3"):
        await guard.register(name)
    guard.provider.probe_result = lambda i: ProbeOutcome(connected=True, phone=None if i == "a-2" else "5511999990000")
    reply = await guard.health.ListInstances(instance_health_pb2.ListInstancesRequest(refresh=True))
    assert {i.instance_id: i.state for i in reply.instances} == {
        "a-1": common_pb2.INSTANCE_STATE_CONNECTED,
        "a-2": common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE,
        "a-3": common_pb2.INSTANCE_STATE_CONNECTED,
    }
    assert sorted(guard.provider.probes) == ["a-1", "a-2", "a-3"]
    only_bad = await guard.health.ListInstances(
        instance_health_pb2.ListInstancesRequest(states=[common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE])
    )
    assert [i.instance_id for i in only_bad.instances] == ["a-2"]


async def test_unknown_instance_health_is_not_found(guard: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id="ghost"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_watch_streams_state_changes(guard: Harness) -> None:
    await guard.register("w-1")
    stream = guard.health.WatchInstances(
        instance_health_pb2.WatchInstancesRequest(instance_ids=["w-1"], include_current=True)
    )
    first: Any = await asyncio.wait_for(stream.read(), 5)
    assert first.health.state == common_pb2.INSTANCE_STATE_UNKNOWN
    assert not first.HasField("change")
    await guard.connect("w-1", phone=None)
    change: Any = await asyncio.wait_for(stream.read(), 5)
    assert change.change.to_state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE
    assert change.change.source == "webhook"
    assert change.health.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE
    stream.cancel()


async def test_standard_health_and_reflection(guard: Harness) -> None:
    health = health_pb2_grpc.HealthStub(guard.channel)
    for service in (
        "",
        "wapiguard.v1.SendService",
        "wapiguard.v1.WebhookService",
        "wapiguard.v1.InstanceHealthService",
    ):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(guard.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = set()
    async for response in responses:
        names |= {s.name for s in response.list_services_response.service}
    assert {
        "wapiguard.v1.SendService",
        "wapiguard.v1.WebhookService",
        "wapiguard.v1.InstanceHealthService",
        "grpc.health.v1.Health",
    } <= names
