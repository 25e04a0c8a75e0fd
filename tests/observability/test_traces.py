"""Traces arrive over OTLP with the attributes, statuses and links an operator needs in Jaeger."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from adapters.simulator import Simulator
from services.api.wapiguard.v1 import (
    common_pb2,
    instance_health_pb2,
    instance_health_pb2_grpc,
    send_pb2,
    send_pb2_grpc,
)
from services.bootstrap import App
from services.config import Settings
from services.observability.telemetry import Telemetry
from tests.observability.otlp_receiver import OtlpReceiver

HEALTHY, INCOMPLETE = "3B6XIW-ZTS923-GEAY6V", "LITE-4IW93E-MGVYDW"
TOKENS = {HEALTHY: "tok-HEALTHY-do-not-leak-81f2", INCOMPLETE: "tok-LITE-do-not-leak-77aa"}
ERROR = 2  # opentelemetry.proto Status.STATUS_CODE_ERROR


@dataclass
class Stack:
    app: App
    sim: Simulator
    receiver: OtlpReceiver
    telemetry: Telemetry
    send: send_pb2_grpc.SendServiceAsyncStub
    health: instance_health_pb2_grpc.InstanceHealthServiceAsyncStub
    channel: grpc.aio.Channel

    async def flush(self) -> None:
        assert self.telemetry.tracer_provider is not None
        await asyncio.to_thread(self.telemetry.tracer_provider.force_flush, 5000)


@pytest.fixture
async def stack(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    receiver = OtlpReceiver()
    await receiver.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "wapi-guard-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    # Receipts follow the send by a few hundred ms: a status that beats its send's SENT commit is
    # parked and applied later, outside the webhook's span (no message id on it), which under a
    # loaded machine made the trace story below lose a span about one run in ten.
    sim = Simulator(acked_after=0.2, delivered_after=0.4, read_after=0.6)
    await sim.start()
    secret = secrets.token_urlsafe(12)
    telemetry = Telemetry()
    app = await App.start(
        Settings(
            grpc_port=0,
            http_port=0,
            database_url=database_url,
            wapi_base_url=sim.base_url,
            webhook_secret=secret,
            probe_interval=0,
            sweep_interval=0,
            log_format="json",
        ),
        telemetry=telemetry,
    )
    sim.set_webhook_url(f"http://127.0.0.1:{app.http_port}/webhooks/wapi/{secret}")
    sim.add_instance(HEALTHY, TOKENS[HEALTHY], behaviour="healthy")
    sim.add_instance(INCOMPLETE, TOKENS[INCOMPLETE], behaviour="session_incomplete")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    stack = Stack(
        app,
        sim,
        receiver,
        telemetry,
        send_pb2_grpc.SendServiceStub(channel),
        instance_health_pb2_grpc.InstanceHealthServiceStub(channel),
        channel,
    )
    for instance_id in (HEALTHY, INCOMPLETE):
        await stack.health.RegisterInstance(
            instance_health_pb2.RegisterInstanceRequest(instance_id=instance_id, token=TOKENS[instance_id])
        )
    try:
        yield stack
    finally:
        await channel.close()
        await app.stop(grace=0.5)
        await sim.stop()
        await receiver.stop()


def text(instance_id: str, key: str) -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(
        instance_id=instance_id, to="5515981121710", idempotency_key=key, text=send_pb2.TextContent(body="oi")
    )


async def wait_read(stack: Stack, message_id: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = await stack.send.GetMessage(send_pb2.GetMessageRequest(message_id=message_id))
        if msg.state == common_pb2.MESSAGE_STATE_READ:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("message never reached READ")


async def test_blocked_send_exports_an_error_attempt_span_under_the_server_span(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.send.SendMessage(text(INCOMPLETE, "blocked-1"))
    await stack.flush()
    [attempt] = stack.receiver.named("wapi.send_attempt")
    attrs = attempt.attributes
    assert attrs["wapi.instance_id"] == INCOMPLETE
    assert attrs["wapi.attempt"] == 1
    assert attrs["wapi.session_health"] == "SESSION_INCOMPLETE"
    assert attrs["wapi.blocked_reason"] == "SESSION_INCOMPLETE"
    assert attrs["wapi.message_id"]
    assert attempt.status_code == ERROR
    assert attempt.status_message == "SESSION_INCOMPLETE"
    server = stack.receiver.by_id(attempt.parent_id)
    assert server.name == "/wapiguard.v1.SendService/SendMessage"
    # The rich error went out through context.abort, so the server span saw the real code.
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert server.resource["service.name"] == "wapi-guard-test"
    children = {s.name for s in stack.receiver.spans if s.parent_id == attempt.span_id}
    assert {"wapi.preflight", "wapi.persist"} <= children


async def test_healthy_send_and_its_delivery_form_one_story(stack: Stack) -> None:
    sent = await stack.send.SendMessage(text(HEALTHY, "ok-1"))
    await wait_read(stack, sent.id)
    await stack.flush()
    [attempt] = stack.receiver.named("wapi.send_attempt")
    attrs = attempt.attributes
    assert attrs["wapi.provider_message_id"] == sent.provider_message_id
    assert attrs["wapi.message_id"] == sent.id
    assert attrs["wapi.session_health"] == "CONNECTED"
    assert attempt.status_code != ERROR
    children = [s for s in stack.receiver.spans if s.parent_id == attempt.span_id]
    provider_call = next(s for s in children if s.name == "wapi.provider.send")
    http = [s for s in stack.receiver.spans if s.parent_id == provider_call.span_id]
    assert http, "no httpx client span under the provider call"
    assert all("message/send-text" in str(s.attributes.get("url.full", s.attributes.get("http.url", ""))) for s in http)

    webhook_spans = [s for s in stack.receiver.named("wapi.webhook") if s.attributes.get("wapi.message_id") == sent.id]
    assert len(webhook_spans) == 3  # sent (the ack), delivered, read
    for span in webhook_spans:
        assert (attempt.trace_id, attempt.span_id) in span.links


async def test_caller_traceparent_is_honoured(stack: Stack) -> None:
    trace_id = secrets.token_hex(16)
    parent = secrets.token_hex(8)
    await stack.send.SendMessage(text(HEALTHY, "tp-1"), metadata=(("traceparent", f"00-{trace_id}-{parent}-01"),))
    await stack.flush()
    [attempt] = stack.receiver.named("wapi.send_attempt")
    assert attempt.trace_id == trace_id
    server = stack.receiver.by_id(attempt.parent_id)
    assert server.parent_id == parent


async def test_instance_state_changes_are_span_events(stack: Stack) -> None:
    await stack.sim.emit(HEALTHY, "connected_without_phone")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        h = await stack.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=HEALTHY))
        if h.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE:
            break
        await asyncio.sleep(0.05)
    await stack.flush()
    events = [e for s in stack.receiver.named("wapi.webhook") for e in s.events if e[0] == "instance.state_change"]
    assert (
        "instance.state_change",
        {
            "wapi.instance_id": HEALTHY,
            "from": "CONNECTED",
            "to": "SESSION_INCOMPLETE",
            "reason": "SESSION_INCOMPLETE",
            "source": "webhook",
        },
    ) in events


async def test_no_token_in_any_exported_span_or_log_line(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sent = await stack.send.SendMessage(text(HEALTHY, "leak-1"))
    await wait_read(stack, sent.id)
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.send.SendMessage(text(INCOMPLETE, "leak-2"))
    stack.sim.set_behaviour(HEALTHY, "token_invalid")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.send.SendMessage(text(HEALTHY, "leak-3"))
    await stack.health.GetInstanceHealth(
        instance_health_pb2.GetInstanceHealthRequest(instance_id=HEALTHY, refresh=True)
    )
    await stack.flush()
    exported = b"".join(stack.receiver.raw)
    assert len(stack.receiver.spans) > 5
    rendered = [
        logging.getLogger().handlers[0].format(r) if logging.getLogger().handlers else r.getMessage()
        for r in caplog.records
    ]
    for token in TOKENS.values():
        assert token.encode() not in exported
        assert all(token not in line for line in rendered)
        assert token not in str(caught.value.details())
        assert token.encode() not in b"".join(
            v if isinstance(v, bytes) else v.encode() for _, v in caught.value.trailing_metadata() or ()
        )


async def test_metrics_are_scrapable(stack: Stack) -> None:
    await stack.send.SendMessage(text(HEALTHY, "m-1"))
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.send.SendMessage(text(INCOMPLETE, "m-2"))
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 15  # generous on a loaded machine; the loop ends when they show
        while True:  # the instance gauges follow the change feed (bounded delay)
            body = (await client.get(f"http://127.0.0.1:{stack.app.http_port}/metrics")).text
            if ("wapiguard_instances{" in body and 'state="SESSION_INCOMPLETE"' in body) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    lines = body.splitlines()

    def sample(name: str, label: str) -> float:
        found = [line for line in lines if line.startswith(name + "{") and label in line]
        assert found, f"{name} with {label} not exported"
        return float(found[0].rsplit(" ", 1)[1])

    assert sample("wapiguard_sends_total", 'outcome="sent"') == 1.0
    assert sample("wapiguard_sends_total", 'outcome="blocked"') == 1.0
    assert sample("wapiguard_sends_blocked_total", 'reason="SESSION_INCOMPLETE"') == 1.0
    assert sample("wapiguard_provider_duration_seconds_count", 'operation="send"') == 1.0
    assert sample("wapiguard_instances", 'state="SESSION_INCOMPLETE"') == 1.0
    assert sample("wapiguard_instances", 'state="CONNECTED"') == 1.0
