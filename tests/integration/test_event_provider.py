"""Every feed event carries the provider API its instance lives on: on the stream, in the list and
in the signed outbound webhook body, read with the page (no query per event)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.api.wapiguard.v1 import common_pb2, events_pb2, events_pb2_grpc, instance_health_pb2
from statemachine.instance_machine import InstanceTrigger
from tests.integration.harness import Harness, start_harness, stop_harness
from tests.integration.test_outbound_webhooks import Receiver, receiver, subs, wait_until  # noqa: F401

INSTANCES = {
    "PV-W": (common_pb2.PROVIDER_UNSPECIFIED, "", common_pb2.PROVIDER_WAPI),  # today's clients: the default
    "PV-Z": (common_pb2.PROVIDER_ZAPI, "", common_pb2.PROVIDER_ZAPI),
    "PV-E": (common_pb2.PROVIDER_EVOLUTION, "https://evo.example.com", common_pb2.PROVIDER_EVOLUTION),
}


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url, webhook_retry_schedule="0.05,0.05", webhook_timeout=2.0)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def register_all(guard: Harness) -> None:
    for instance_id, (provider, base_url, _) in INSTANCES.items():
        await guard.health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(
                instance_id=instance_id,
                token="tok-secret-123456",
                plan=common_pb2.PLAN_PRO,
                skip_probe=True,
                provider=provider,
                base_url=base_url,
            )
        )


async def disconnect_all(guard: Harness) -> None:
    for instance_id in INSTANCES:
        change = await guard.repo.apply_instance_trigger(instance_id, InstanceTrigger.REPORT_DISCONNECTED, source="t")
        assert change is not None
        assert change.decision.changed


async def test_the_stream_and_the_list_name_each_events_provider(guard: Harness) -> None:
    await register_all(guard)
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    await disconnect_all(guard)
    only = events_pb2.EventFilter(instance_ids=list(INSTANCES), types=[events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED])
    stream = stub.Subscribe(events_pb2.SubscribeRequest(from_oldest=True, filter=only))
    streamed: dict[str, int] = {}

    async def read() -> None:
        async for item in stream:
            if item.HasField("event"):
                streamed[item.event.instance_id] = item.event.provider
            if len(streamed) == len(INSTANCES):
                return

    await asyncio.wait_for(read(), 15)
    stream.cancel()
    expected = {instance_id: want for instance_id, (_, _, want) in INSTANCES.items()}
    assert streamed == expected
    listed = await stub.ListEvents(events_pb2.ListEventsRequest(from_oldest=True, page_size=100))
    health = [e for e in listed.events if e.type == events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED]
    assert {e.instance_id: e.provider for e in health} == expected


async def test_a_removed_instances_events_say_the_provider_is_unknown(guard: Harness) -> None:
    await register_all(guard)
    await disconnect_all(guard)
    await guard.health.RemoveInstance(instance_health_pb2.InstanceRequest(instance_id="PV-Z"))
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    only = events_pb2.EventFilter(instance_ids=["PV-Z"])
    listed = await stub.ListEvents(events_pb2.ListEventsRequest(from_oldest=True, page_size=100, filter=only))
    assert listed.events
    assert {e.provider for e in listed.events} == {common_pb2.PROVIDER_UNSPECIFIED}


async def test_the_signed_webhook_body_names_the_provider(
    guard: Harness,
    receiver: Receiver,  # noqa: F811
) -> None:
    await register_all(guard)
    sub = await subs(guard).CreateWebhookSubscription(
        events_pb2.CreateWebhookSubscriptionRequest(
            url=receiver.url, types=[events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED]
        )
    )
    await disconnect_all(guard)
    await wait_until(lambda: len(receiver.posts) >= len(INSTANCES))
    bodies = [body for _, body in receiver.verified(sub.secret)]
    assert {b["data"]["instance_id"]: b["data"]["provider"] for b in bodies} == {
        "PV-W": "PROVIDER_WAPI",
        "PV-Z": "PROVIDER_ZAPI",
        "PV-E": "PROVIDER_EVOLUTION",
    }
