"""The W-API simulator itself: webhooks, emit shapes, auth, gateway rotation, control API and CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.simulator import GATEWAY_VARIANTS, Simulator, WebhookReceiver
from adapters.simulator.cli import main as cli_main
from adapters.simulator.cli import parse_instance_spec
from adapters.wapi.client import WapiProvider
from adapters.wapi.webhooks import parse_webhook
from statemachine.domain import Credentials, MessageKind, OutboundMessage, Text

INSTANCE = "3B6XIW-ZTS923-GEAY6V"
TOKEN = "S3cr3t-T0ken-9f8e7d6c5b4a"  # as in conftest.py
PHONE = "5511999990000"
TO = "5511988887777"
REPO = Path(__file__).resolve().parents[2]
TEXT = OutboundMessage(MessageKind.TEXT, TO, Text("Olá"))
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_healthy_send_posts_sent_then_delivered_then_read(receiver: WebhookReceiver, creds: Credentials) -> None:
    async with Simulator(receiver.url, delivered_after=0.05, read_after=0.1, acked_after=0.01) as sim:
        sim.add_instance(INSTANCE, TOKEN, phone=PHONE)
        async with WapiProvider(sim.base_url) as wapi:
            outcome = await wapi.send(creds, TEXT, timeout=2.0)
        sent, delivered, read = await receiver.wait_for(3)
    mid = outcome.provider_message_id
    for body, status in ((sent, "sent"), (delivered, "delivered"), (read, "read")):
        assert body == {
            "event": "webhookStatus",
            "instanceId": INSTANCE,
            "connectedPhone": PHONE,
            "messageId": mid,
            "status": status,
            "chat": {"id": TO},
            "moment": body["moment"],
        }
        assert isinstance(body["moment"], int)
        assert abs(body["moment"] - time.time()) < 5
    assert receiver.paths == ["/hook/secret-path"] * 3  # the configured URL, secret path included
    assert sim.webhook_errors == 0


async def test_stop_cancels_pending_webhooks(receiver: WebhookReceiver, creds: Credentials) -> None:
    sim = Simulator(receiver.url, delivered_after=5.0, read_after=10.0)
    await sim.start()
    sim.add_instance(INSTANCE, TOKEN)
    async with WapiProvider(sim.base_url) as wapi:
        assert (await wapi.send(creds, TEXT, timeout=2.0)).accepted
    started = time.monotonic()
    await sim.stop()
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0.05)
    assert receiver.bodies == []


async def test_stop_releases_hanging_requests(creds: Credentials) -> None:
    sim = Simulator()
    await sim.start()
    sim.add_instance(INSTANCE, TOKEN, behaviour="timeout")
    async with httpx.AsyncClient() as client:
        pending = asyncio.create_task(
            client.get(f"{sim.base_url}/instance/status-instance", params={"instanceId": INSTANCE}, headers=AUTH)
        )
        for _ in range(200):  # bounded: until the simulator holds the request
            if sim.requests:
                break
            await asyncio.sleep(0.005)
        started = time.monotonic()
        await sim.stop()
        assert time.monotonic() - started < 1.5
        response = await asyncio.wait_for(pending, 2.0)
    assert response.status_code == 504


# --- emit ----------------------------------------------------------------------------------------


def _shape(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "moment"}


@pytest.mark.parametrize(
    ("kind", "kw", "expected"),
    [
        (
            "status",
            {"message_id": "3EB0M1", "status": "played", "to": TO},
            [
                {
                    "event": "webhookStatus",
                    "instanceId": INSTANCE,
                    "connectedPhone": PHONE,
                    "messageId": "3EB0M1",
                    "status": "played",
                    "chat": {"id": TO},
                }
            ],
        ),
        (
            "status",
            {"message_id": "3EB0M2", "status": "failed", "to": TO},
            [
                {
                    "event": "webhookStatus",
                    "instanceId": INSTANCE,
                    "connectedPhone": PHONE,
                    "messageId": "3EB0M2",
                    "status": "failed",
                    "chat": {"id": TO},
                }
            ],
        ),
        (
            "connected",
            {},
            [{"event": "webhookConnected", "instanceId": INSTANCE, "connected": True, "connectedPhone": PHONE}],
        ),
        (
            "connected_without_phone",
            {},
            [{"event": "webhookConnected", "instanceId": INSTANCE, "connected": True}],
        ),
        (
            "disconnected",
            {},
            [{"event": "webhookDisconnected", "instanceId": INSTANCE, "connected": False}],
        ),
        (
            "eventless",
            {"chat": TO, "status": "composing"},
            [
                {
                    "instanceId": INSTANCE,
                    "connectedPhone": PHONE,
                    "connectedLid": "176488829694091@lid",
                    "chat": {"id": TO},
                    "status": "composing",
                }
            ],
        ),
        (
            "delivery",
            {"message_id": "3EB0D1", "to": TO, "text": "Olá"},
            [
                {
                    "event": "webhookDelivery",
                    "instanceId": INSTANCE,
                    "connectedPhone": PHONE,
                    "connectedLid": "176488829694091@lid",
                    "isGroup": False,
                    "messageId": "3EB0D1",
                    "fromMe": True,
                    "fromApi": True,
                    "chat": {"id": TO},
                    "msgContent": {"extendedTextMessage": {"text": "Olá"}},
                }
            ],
        ),
        (
            "received",
            {"sender": TO, "text": "teste", "message_id": "3EB0R1", "push_name": "name"},
            [
                {
                    "event": "webhookReceived",
                    "instanceId": INSTANCE,
                    "connectedPhone": PHONE,
                    "isGroup": False,
                    "messageId": "3EB0R1",
                    "fromMe": False,
                    "chat": {"id": TO, "profilePicture": ""},
                    "sender": {"id": TO, "profilePicture": "", "pushName": "name", "verifiedBizName": ""},
                    "msgContent": {"extendedTextMessage": {"text": "teste"}},
                }
            ],
        ),
    ],
)
async def test_emit_shapes(
    sim: Simulator, receiver: WebhookReceiver, kind: str, kw: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN, phone=PHONE)
    returned = await sim.emit(INSTANCE, kind, **kw)
    posted = await receiver.wait_for(len(expected))
    assert posted == returned
    assert [_shape(b) for b in posted] == expected
    assert all(isinstance(b["moment"], int) for b in posted)


async def test_emit_duplicate_status_posts_the_same_body_twice(sim: Simulator, receiver: WebhookReceiver) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN)
    await sim.emit(INSTANCE, "duplicate_status", message_id="3EB0DUP", status="delivered", to=TO)
    first, second = await receiver.wait_for(2)
    assert first == second
    assert (first["event"], first["messageId"], first["status"]) == ("webhookStatus", "3EB0DUP", "delivered")


async def test_emit_out_of_order_posts_read_before_delivered(
    sim: Simulator, receiver: WebhookReceiver, creds: Credentials
) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="silent_stall")
    async with WapiProvider(sim.base_url) as wapi:
        mid = (await wapi.send(creds, TEXT, timeout=2.0)).provider_message_id
    assert mid is not None
    sim.set_webhook_url(receiver.url)
    await sim.emit(INSTANCE, "out_of_order", message_id=mid)
    first, second = await receiver.wait_for(2)
    assert [first["status"], second["status"]] == ["read", "delivered"]
    assert first["messageId"] == second["messageId"] == mid
    assert first["chat"] == {"id": TO}  # recipient looked up from the recorded send


async def test_emit_validates_kind_and_target(sim: Simulator) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    with pytest.raises(ValueError, match="unknown emit kind"):
        await sim.emit(INSTANCE, "nope")
    with pytest.raises(RuntimeError, match="no webhook URL"):
        await sim.emit(INSTANCE, "connected")
    with pytest.raises(KeyError):
        await sim.emit("unknown", "connected")


async def test_webhook_errors_are_swallowed_and_counted(sim: Simulator, closed_port: int) -> None:
    sim.set_webhook_url(f"http://127.0.0.1:{closed_port}/hook")
    sim.add_instance(INSTANCE, TOKEN)
    await sim.emit(INSTANCE, "connected")
    await sim.emit(INSTANCE, "disconnected")
    assert sim.webhook_errors == 2
    assert all(p["error"] for p in sim.webhook_posts)


async def test_update_webhook_routes_one_kind_elsewhere(
    sim: Simulator, receiver: WebhookReceiver, closed_port: int
) -> None:
    sim.set_webhook_url(f"http://127.0.0.1:{closed_port}/default")
    sim.add_instance(INSTANCE, TOKEN)
    async with httpx.AsyncClient() as client:
        answer = await client.put(
            f"{sim.base_url}/webhook/update-webhook-connected",
            params={"instanceId": INSTANCE},
            headers=AUTH,
            json={"urlWebhook": receiver.url},
        )
    assert answer.status_code == 200
    await sim.emit(INSTANCE, "connected")
    [body] = await receiver.wait_for(1)
    assert body["event"] == "webhookConnected"


# --- W-API surface -------------------------------------------------------------------------------


async def test_auth_and_instance_id_are_enforced(sim: Simulator) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    url = f"{sim.base_url}/instance/status-instance"
    async with httpx.AsyncClient() as client:
        no_instance = await client.get(url, headers=AUTH)
        no_auth = await client.get(url, params={"instanceId": INSTANCE})
        basic = await client.get(url, params={"instanceId": INSTANCE}, headers={"Authorization": f"Basic {TOKEN}"})
        wrong = await client.get(url, params={"instanceId": INSTANCE}, headers={"Authorization": "Bearer nope"})
        ok = await client.get(url, params={"instanceId": INSTANCE}, headers=AUTH)
    assert no_instance.status_code == 400
    assert [no_auth.status_code, basic.status_code, wrong.status_code] == [401, 401, 401]
    assert no_auth.json() == {"error": True, "message": "Token inválido ou expirado"}
    assert ok.status_code == 200
    assert [r.has_valid_auth for r in sim.requests] == [False, False, False, False, True]
    assert TOKEN not in repr(sim.requests)


async def test_requests_redact_token_like_query_keys(sim: Simulator) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    async with httpx.AsyncClient() as client:
        await client.get(
            f"{sim.base_url}/instance/status-instance", params={"instanceId": INSTANCE, "token": TOKEN}, headers=AUTH
        )
    assert sim.requests[0].query == {"instanceId": INSTANCE, "token": "***"}


async def test_gateway_error_rotation_is_deterministic(sim: Simulator) -> None:
    sim.add_instance(INSTANCE, TOKEN, behaviour="gateway_error")
    async with httpx.AsyncClient() as client:
        answers = [
            await client.get(f"{sim.base_url}/instance/status-instance", params={"instanceId": INSTANCE}, headers=AUTH)
            for _ in range(len(GATEWAY_VARIANTS) + 1)
        ]
    assert [a.status_code for a in answers] == [502, 503, 504, 200, 502]
    assert answers[0].text == "<html><body><h1>502 Bad Gateway</h1></body></html>"
    assert answers[0].headers["content-type"].startswith("text/html")
    assert answers[3].headers["content-type"].startswith("text/html")


async def test_send_validation_rejects_bad_bodies(sim: Simulator) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    url = f"{sim.base_url}/message/send-location"
    body = {"phone": TO, "name": "", "address": "", "latitude": -23.5, "longitude": "-46.6"}
    async with httpx.AsyncClient() as client:
        numeric = await client.post(url, params={"instanceId": INSTANCE}, headers=AUTH, json=body)
        missing = await client.post(
            f"{sim.base_url}/message/send-text", params={"instanceId": INSTANCE}, headers=AUTH, json={"phone": TO}
        )
    assert numeric.status_code == 400
    assert "latitude" in numeric.json()["message"]
    assert missing.status_code == 400
    assert missing.json() == {"error": True, "message": "missing required field(s): message"}
    assert len(sim.sends(INSTANCE)) == 2  # refused sends are still recorded


async def test_instance_endpoints(sim: Simulator, receiver: WebhookReceiver) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN, phone=PHONE, plan="lite")
    params = {"instanceId": INSTANCE}
    async with httpx.AsyncClient(base_url=sim.base_url + "/", headers=AUTH) as client:
        fetched = (await client.get("instance/fetch-instance", params=params)).json()
        qr_connected = (await client.get("instance/qr-code", params=params)).json()
        restart = await client.get("instance/restart", params=params)
        disconnect = await client.get("instance/disconnect", params=params)
        status = (await client.get("instance/status-instance", params=params)).json()
        qr = (await client.get("instance/qr-code", params=params)).json()
        png = await client.get("instance/qr-code", params={**params, "image": "enable"})
    assert fetched["connected"] is True
    assert fetched["connectedPhone"] == PHONE
    assert fetched["plan"] == "LITE"
    assert qr_connected["connected"] is True
    assert restart.status_code == 200
    assert disconnect.status_code == 200
    assert status["connected"] is False
    assert status["qrcode"].startswith("data:image/png;base64,")
    assert qr["qrcode"].startswith("data:image/png;base64,")
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    # restart posts the session going down and coming back; disconnect posts it going down
    hooks = await receiver.wait_for(3)
    assert sorted(h["event"] for h in hooks) == ["webhookConnected", "webhookDisconnected", "webhookDisconnected"]


def test_configuration_is_validated() -> None:
    sim = Simulator()
    with pytest.raises(ValueError, match="behaviour"):
        sim.add_instance(INSTANCE, TOKEN, behaviour="flaky")
    with pytest.raises(ValueError, match="status style"):
        sim.add_instance(INSTANCE, TOKEN, status_style="bogus")
    sim.add_instance(INSTANCE, TOKEN)
    with pytest.raises(ValueError, match="unknown behaviour"):
        sim.set_behaviour(INSTANCE, "nope")
    with pytest.raises(KeyError):
        sim.set_behaviour("unknown", "healthy")
    assert TOKEN not in repr(sim._instances[INSTANCE])


# --- control API and CLI -------------------------------------------------------------------------


async def test_control_api_drives_the_simulator(sim: Simulator, receiver: WebhookReceiver) -> None:
    control = f"{sim.root_url}/_sim"
    async with httpx.AsyncClient() as client:
        created = await client.post(
            f"{control}/instances",
            json={"instance_id": INSTANCE, "token": TOKEN, "behaviour": "silent_stall", "status_style": "wid"},
        )
        assert created.status_code == 201
        await client.post(f"{control}/webhook-url", json={"url": receiver.url})
        async with WapiProvider(sim.base_url) as wapi:
            creds = Credentials(INSTANCE, TOKEN)
            probe = await wapi.probe(creds, timeout=2.0)
            mid = (await wapi.send(creds, TEXT, timeout=2.0)).provider_message_id
        sends = (await client.get(f"{control}/instances/{INSTANCE}/sends")).json()["sends"]
        emitted = await client.post(
            f"{control}/instances/{INSTANCE}/emit", json={"kind": "status", "message_id": mid, "status": "read"}
        )
        behaviour = await client.post(f"{control}/instances/{INSTANCE}/behaviour", json={"behaviour": "deleted"})
        bad = await client.post(f"{control}/instances/{INSTANCE}/behaviour", json={"behaviour": "nope"})
        unknown = await client.get(f"{control}/instances/NOPE/sends")
        requests = (await client.get(f"{control}/requests")).json()["requests"]
        health = (await client.get(f"{control}/health")).json()
    assert (probe.connected, probe.phone) == (True, "5511999990000")
    assert [s["message_id"] for s in sends] == [mid]
    assert emitted.status_code == 200
    assert (await receiver.wait_for(1))[0]["status"] == "read"
    assert behaviour.status_code == 200
    assert bad.status_code == 400
    assert unknown.status_code == 404
    assert [r["path"] for r in requests] == ["/instance/status-instance", "/message/send-text"]
    assert health["instances"] == [INSTANCE]


def test_cli_parses_instance_specs() -> None:
    spec = parse_instance_spec("3B6XIW-ZTS923-GEAY6V:tok:session_incomplete:5511912345678")
    assert (spec.instance_id, spec.token, spec.behaviour, spec.phone) == (
        "3B6XIW-ZTS923-GEAY6V",
        "tok",
        "session_incomplete",
        "5511912345678",
    )
    assert parse_instance_spec("A:t:healthy").phone is None
    with pytest.raises(SystemExit):
        cli_main(["--instance", "A:t:flaky"])
    with pytest.raises(SystemExit):
        cli_main(["--instance", "only-id"])


async def test_cli_serves_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.simulator.cli",
        "--port",
        "0",
        "--instance",
        f"{INSTANCE}:{TOKEN}:healthy:5511912345678",
        "--status-style",
        "me_id",
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10.0)).decode().strip()
        assert line.startswith("http://127.0.0.1:")
        assert line.endswith("/v1")
        async with WapiProvider(line) as wapi:
            outcome = await wapi.probe(Credentials(INSTANCE, TOKEN), timeout=2.0)
        assert (outcome.connected, outcome.phone) == (True, "5511912345678")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 5.0) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the simulator's webhooks through the service's parser ----------------------------------------


@pytest.mark.parametrize(
    ("kind", "kw", "route", "fields"),
    [
        (
            "status",
            {"message_id": "3EB0S1", "status": "read", "to": TO},
            "MESSAGE_STATUS",
            {"provider_message_id": "3EB0S1", "status": "READ"},
        ),
        ("connected", {}, "CONNECTION", {"connected": True, "phone": PHONE}),
        ("connected_without_phone", {}, "CONNECTION", {"connected": True, "phone": None}),
        ("disconnected", {}, "DISCONNECTION", {"connected": False}),
        ("eventless", {"chat": TO, "status": "composing"}, "CHAT_STATUS", {"chat_id": TO}),
        (
            "delivery",
            {"message_id": "3EB0D2", "to": TO},
            "DELIVERY",
            {"provider_message_id": "3EB0D2", "from_api": True},
        ),
        ("received", {"sender": TO, "message_id": "3EB0R2"}, "RECEIVED", {"provider_message_id": "3EB0R2"}),
    ],
)
async def test_emitted_bodies_are_routed_by_the_webhook_parser(
    sim: Simulator, receiver: WebhookReceiver, kind: str, kw: dict[str, Any], route: str, fields: dict[str, Any]
) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN, phone=PHONE)
    [body] = await sim.emit(INSTANCE, kind, **kw)
    event = parse_webhook(json.dumps(body).encode())
    assert event.route == route
    assert event.instance_id == INSTANCE
    for name, value in fields.items():
        assert getattr(event, name) == value, name


async def test_duplicate_status_bodies_share_a_dedupe_key(sim: Simulator, receiver: WebhookReceiver) -> None:
    sim.set_webhook_url(receiver.url)
    sim.add_instance(INSTANCE, TOKEN)
    first, second = await sim.emit(INSTANCE, "duplicate_status", message_id="3EB0DK", status="delivered", to=TO)
    assert parse_webhook(json.dumps(first).encode()).dedupe_key == parse_webhook(json.dumps(second).encode()).dedupe_key
