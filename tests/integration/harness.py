"""A real wapi-guard server on a free loopback port, a real database, and gRPC stubs."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.api.wapiguard.v1 import (
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2_grpc,
    webhook_pb2,
    webhook_pb2_grpc,
)
from services.bootstrap import App
from services.config import Settings
from statemachine.domain import Credentials, OutboundMessage, ProbeOutcome, SendOutcome

_ids = itertools.count(1)


class ScriptedProvider:
    """A stand-in for the provider *port* (the W-API adapter has its own tests against the
    simulator). It records every call, so tests can count provider round-trips."""

    def __init__(self) -> None:
        self.sends: list[tuple[str, OutboundMessage]] = []
        self.probes: list[str] = []
        self.probe_result: Callable[[str], ProbeOutcome] = lambda _id: ProbeOutcome(
            connected=True, phone="5511999990000"
        )
        self.send_result: Callable[[OutboundMessage], SendOutcome] = lambda _m: SendOutcome(
            provider_message_id=f"3EB0{next(_ids):012X}"
        )
        self.send_gate: asyncio.Event | None = None

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        self.sends.append((credentials.instance_id, message))
        if self.send_gate is not None:
            await self.send_gate.wait()
        return self.send_result(message)

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome:
        self.probes.append(credentials.instance_id)
        return self.probe_result(credentials.instance_id)

    async def aclose(self) -> None:
        return None


async def wire_webhooks(app: Any, instance_id: str) -> None:
    """Records the instance's W-API webhooks as pointing at the bridge (what `webhooks configure`
    stores once W-API's read-back matches) and drops the preflight's cached copy."""
    repo = app.store
    await getattr(repo, "inner", repo).set_webhooks_state(instance_id, "CONFIGURED", "")
    app.instances.forget(instance_id)


@dataclass
class Harness:
    app: App
    channel: grpc.aio.Channel
    provider: Any
    send: send_pb2_grpc.SendServiceAsyncStub = field(init=False)
    webhooks: webhook_pb2_grpc.WebhookServiceAsyncStub = field(init=False)
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.send = send_pb2_grpc.SendServiceStub(self.channel)
        self.webhooks = webhook_pb2_grpc.WebhookServiceStub(self.channel)
        self.health = instance_health_pb2_grpc.InstanceHealthServiceStub(self.channel)

    @property
    def repo(self) -> Any:
        return self.app.store

    async def register(
        self,
        instance_id: str,
        *,
        token: str = "tok-secret-123456",
        plan: Any = 1,
        probe: bool = False,
        wired: bool = True,
    ) -> Any:
        """`wired`: this harness feeds the provider's webhooks straight in (IngestEvent), so the
        instance is recorded as `webhooks configure` leaves it (CONFIGURED); False: UNCONFIGURED."""
        answer = await self.health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(
                instance_id=instance_id,
                name=instance_id.title(),
                token=token,
                plan=plan,
                skip_probe=not probe,
            )
        )
        if not wired:
            return answer
        await wire_webhooks(self.app, instance_id)
        return await self.health.GetInstanceHealth(
            instance_health_pb2.GetInstanceHealthRequest(instance_id=instance_id)
        )

    async def webhook(self, body: dict[str, Any] | bytes) -> webhook_pb2.IngestEventResponse:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.webhooks.IngestEvent(webhook_pb2.IngestEventRequest(payload=payload))

    async def connect(self, instance_id: str, phone: str | None = "5511999990000") -> None:
        # A new moment per call: a real reconnection is a new event, an identical body is a re-delivery.
        body: dict[str, Any] = {
            "event": "webhookConnected",
            "instanceId": instance_id,
            "connected": True,
            "moment": 1_749_132_337 + next(_ids),
        }
        if phone is not None:
            body["connectedPhone"] = phone
        await self.webhook(body)


async def start_harness(database_url: str, provider: Any | None = None, **settings: Any) -> Harness:
    values: dict[str, Any] = {
        "grpc_port": 0,
        "http_port": -1,
        "database_url": database_url,
        "probe_interval": 0,
        "shutdown_grace": 1.0,
        "log_format": "text",
        # Receivers in tests listen on loopback: the production default refuses such targets.
        "webhook_allow_private": True,
    }
    values.update(settings)
    provider = provider or ScriptedProvider()
    app = await App.start(Settings(**values), provider=provider)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    return Harness(app, channel, provider)


async def stop_harness(harness: Harness) -> None:
    """Stops the app, bounded: a shutdown that hangs fails the test with every task's stack."""
    await harness.channel.close()
    try:
        await asyncio.wait_for(harness.app.stop(grace=0.5), STOP_TIMEOUT)
    except TimeoutError:
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)
        raise


STOP_TIMEOUT = 60.0


@dataclass
class RichError:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    localized: str
    violations: dict[str, str]


def rich_error(error: grpc.aio.AioRpcError) -> RichError:
    """Decodes google.rpc.Status details from the trailers, as a client would."""
    status = rpc_status.from_call(error)
    assert status is not None, f"no rich status on {error.code()}: {error.details()}"
    info = error_details_pb2.ErrorInfo()
    localized = error_details_pb2.LocalizedMessage()
    bad = error_details_pb2.BadRequest()
    found_info = False
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            found_info = True
        elif detail.Is(localized.DESCRIPTOR):
            detail.Unpack(localized)
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
    assert found_info, "ErrorInfo missing"
    return RichError(
        error.code(),
        info.reason,
        info.domain,
        dict(info.metadata),
        localized.message,
        {v.field: v.description for v in bad.field_violations},
    )
