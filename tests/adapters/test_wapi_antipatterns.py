"""docs/wapi-contract.md, "What the replaced system got wrong": one named test (or more) per item.

Items 2, 5, 6 and 7 are decided by the core / the webhook parser; here we pin the adapter's and the
simulator's half: what they report and emit so the core can get it right.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from adapters.simulator import BEHAVIOURS, STATUS_STYLES, Simulator, WebhookReceiver
from adapters.wapi.client import WapiProvider
from statemachine.domain import Credentials, MessageKind, OutboundMessage, Reason, Text

INSTANCE = "3B6XIW-ZTS923-GEAY6V"
TOKEN = "S3cr3t-T0ken-9f8e7d6c5b4a"  # as in conftest.py
PHONE = "5511999990000"
TO = "5511988887777"
TEXT = OutboundMessage(MessageKind.TEXT, TO, Text("Olá"))
FAILING_SEND_BEHAVIOURS = [
    "timeout",
    "gateway_error",
    "disconnected",
    "token_invalid",
    "deleted",
    "accepted_without_id",
    "accepted_with_error",
]


# 1. The status probe walks five endpoints; only the last path checks for a phone.


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
async def test_antipattern_1_probe_uses_one_endpoint_consistently(
    sim: Simulator, creds: Credentials, behaviour: str
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour=behaviour)
    async with WapiProvider(sim.base_url, probe_attempts=3) as wapi:
        await wapi.probe(creds, timeout=0.3)
        await wapi.probe(creds, timeout=0.3)
    paths = {(r.method, r.path) for r in sim.requests}
    assert paths == {("GET", "/instance/status-instance")}


@pytest.mark.parametrize("style", STATUS_STYLES)
async def test_antipattern_1_every_spelling_reports_missing_phone(
    sim: Simulator, provider: WapiProvider, creds: Credentials, style: str
) -> None:
    """Whatever spelling says "connected", a missing phone is reported (phone=None), never filled in."""
    sim.add_instance(INSTANCE, TOKEN, behaviour="session_incomplete", status_style=style)
    outcome = await provider.probe(creds, timeout=2.0)
    assert outcome.connected is True
    assert outcome.phone is None


# 2. The send preflight lets degraded / TIMEOUT_OR_GATEWAY through.


@pytest.mark.parametrize("behaviour", ["timeout", "gateway_error"])
async def test_antipattern_2_gateway_trouble_never_reads_as_connected(
    sim: Simulator, creds: Credentials, behaviour: str
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour=behaviour)
    async with WapiProvider(sim.base_url, probe_attempts=2) as wapi:
        for _ in range(4):
            outcome = await wapi.probe(creds, timeout=0.2)
            assert outcome.connected is None  # neither connected nor disconnected: keep last state
            assert outcome.failure is Reason.TIMEOUT_OR_GATEWAY


# 3. send-text retries the same message with six body variants.


@pytest.mark.parametrize("behaviour", FAILING_SEND_BEHAVIOURS)
async def test_antipattern_3_failed_send_is_exactly_one_request(
    sim: Simulator, provider: WapiProvider, creds: Credentials, behaviour: str
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour=behaviour)
    outcome = await provider.send(creds, TEXT, timeout=0.2)
    assert not outcome.accepted
    assert len(sim.sends(INSTANCE)) == 1
    assert len(sim.requests) == 1


async def test_antipattern_3_no_body_variants_across_failures(
    sim: Simulator, provider: WapiProvider, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="accepted_with_error")
    for _ in range(3):
        await provider.send(creds, TEXT, timeout=1.0)
    bodies = [s["body"] for s in sim.sends(INSTANCE)]
    assert bodies == [{"phone": TO, "message": "Olá"}] * 3  # one shape, one request per call
    assert {s["endpoint"] for s in sim.sends(INSTANCE)} == {"/message/send-text"}


async def test_antipattern_3_connection_dropped_mid_send_is_one_attempt(creds: Credentials) -> None:
    """The server reads the request and hangs up without answering: no second attempt."""
    connections: list[bytes] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with WapiProvider(f"http://127.0.0.1:{port}/v1") as wapi:
            outcome = await wapi.send(creds, TEXT, timeout=1.0)
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.failure is Reason.PROVIDER_UNAVAILABLE
    assert len(connections) == 1
    assert connections[0].startswith(b"POST /v1/message/send-text?instanceId=")


# 4. A 2xx send answer without a message id is stored as `sent` under an invented id.


async def test_antipattern_4_accepted_without_id_invents_no_id(
    sim: Simulator, provider: WapiProvider, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="accepted_without_id")
    outcome = await provider.send(creds, TEXT, timeout=1.0)
    assert outcome.failure is Reason.PROVIDER_NO_MESSAGE_ID
    assert outcome.provider_message_id is None
    assert outcome.accepted is False
    assert outcome.http_status == 200


async def test_antipattern_4_html_200_is_not_a_send(sim: Simulator, provider: WapiProvider, creds: Credentials) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="gateway_error")
    outcomes = [await provider.send(creds, TEXT, timeout=1.0) for _ in range(4)]
    html_200 = [o for o in outcomes if o.http_status == 200]
    assert len(html_200) == 1
    assert html_200[0].failure is Reason.PROVIDER_UNAVAILABLE
    assert html_200[0].provider_message_id is None


# 5. The connection webhook writes `connected` without checking `connectedPhone`.


async def test_antipattern_5_connected_webhook_without_phone_has_no_phone_key(
    sim: Simulator, receiver: WebhookReceiver
) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN, behaviour="session_incomplete")
    [body] = await sim.emit(INSTANCE, "connected_without_phone")
    assert await receiver.wait_for(1) == [body]
    assert body["connected"] is True
    assert "connectedPhone" not in body


# 6. Event-less status bodies are dropped.


async def test_antipattern_6_eventless_bodies_have_exactly_the_brief_keys(
    sim: Simulator, receiver: WebhookReceiver
) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN)
    await sim.emit(INSTANCE, "eventless", chat=TO, status="composing")
    [body] = await receiver.wait_for(1)
    assert set(body) == {"instanceId", "connectedPhone", "connectedLid", "chat", "status", "moment"}
    assert "event" not in body


# 7. Nothing notices messages that stay `sent` forever.


@pytest.mark.parametrize("behaviour", ["silent_stall", "session_incomplete"])
async def test_antipattern_7_stalled_instances_accept_but_never_deliver(
    receiver: WebhookReceiver, creds: Credentials, behaviour: str
) -> None:
    async with Simulator(receiver.url, delivered_after=0.01, read_after=0.02) as sim:
        sim.add_instance(INSTANCE, TOKEN, behaviour=behaviour)
        sim.add_instance("CONTROL-000000-000000", "t2")
        async with WapiProvider(sim.base_url) as wapi:
            assert (await wapi.send(creds, TEXT, timeout=1.0)).accepted
            # A healthy instance on the same simulator does deliver: the silence is the stall.
            assert (await wapi.send(Credentials("CONTROL-000000-000000", "t2"), TEXT, timeout=1.0)).accepted
        bodies = await receiver.wait_for(2)
    assert {b["instanceId"] for b in bodies} == {"CONTROL-000000-000000"}


# The token never leaks.


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """A loopback server that echoes the caller's Authorization header back in every answer shape."""

    async def handler(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        mode = request.query.get("instanceId", "").removeprefix("ECHO-")
        if mode == "html":
            return web.Response(status=502, text=f"<html><title>{auth}</title></html>", content_type="text/html")
        if mode == "plain":
            return web.Response(status=400, text=f"bad token {token}")
        if mode == "ok_error":
            return web.json_response({"error": True, "message": f"token {token} rejected"})
        if mode == "status":
            return web.json_response({"error": f"{auth}"}, status=401)
        return web.json_response({"error": True, "message": f"invalid {auth}"}, status=422)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        await runner.cleanup()


async def test_token_never_appears_in_outcomes_or_logs(
    sim: Simulator, echo_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: list[object] = []
    for behaviour in BEHAVIOURS:
        instance = f"I-{behaviour}"
        sim.add_instance(instance, TOKEN, behaviour=behaviour)
        creds = Credentials(instance, TOKEN)
        async with WapiProvider(sim.base_url) as wapi:
            seen.append(wapi)
            seen.append(await wapi.send(creds, TEXT, timeout=0.2))
            seen.append(await wapi.probe(creds, timeout=0.2))
            seen.append(await wapi.send(Credentials(instance, TOKEN + "x"), TEXT, timeout=0.2))
    # A provider that echoes the token back, in every shape it can.
    for mode in ("html", "plain", "ok_error", "status", "json"):
        creds = Credentials(f"ECHO-{mode}", TOKEN)
        async with WapiProvider(echo_server) as wapi:
            send = await wapi.send(creds, TEXT, timeout=1.0)
            probe = await wapi.probe(creds, timeout=1.0)
        assert send.failure is not None
        assert "***" in send.detail, (mode, send.detail)  # the echo happened and was scrubbed
        assert probe.failure is not None or probe.connected is not None
        seen.extend([send, probe])

    texts = [repr(x) for x in seen] + [str(x) for x in seen] + [getattr(x, "detail", "") for x in seen]
    texts += [repr(Credentials(INSTANCE, TOKEN)), str(Credentials(INSTANCE, TOKEN)), repr(sim.requests)]
    assert caplog.records  # the adapter does log at DEBUG
    texts.append(caplog.text)
    for text in texts:
        assert TOKEN not in text
    assert PHONE  # the phone is fine to log; only the token is secret


async def test_echoed_token_is_scrubbed_not_dropped(echo_server: str) -> None:
    async with WapiProvider(echo_server) as wapi:
        outcome = await wapi.send(Credentials("ECHO-ok_error", TOKEN), TEXT, timeout=1.0)
    assert outcome.failure is Reason.PROVIDER_ERROR
    assert outcome.detail == "token *** rejected"
