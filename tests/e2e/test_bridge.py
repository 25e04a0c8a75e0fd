"""The HTTP webhook bridge over real HTTP on 127.0.0.1 (httpx), as W-API or a proxy would call it."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from adapters.persistence.schema import events
from tests.e2e.stack import CONNECTED, DELIVERED, Stack, text_request

MAX_BODY = 256 * 1024
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def instance() -> str:
    """An instance id of this test only (the Postgres test database may be shared)."""
    return f"BRIDGE-{secrets.token_hex(4).upper()}"


def status_body(instance_id: str, message_id: str = "3EB0AAAABBBBCCCCDDDD") -> bytes:
    return json.dumps(
        {
            "event": "webhookStatus",
            "instanceId": instance_id,
            "messageId": message_id,
            "status": "delivered",
            "moment": 1_749_132_400,
        }
    ).encode()


def received_body(instance_id: str, text: str, message_id: str = "3EB0RECEIVED0000000001") -> bytes:
    """A webhookReceived as W-API posts it (docs/wapi-contract.md), with a text of any length."""
    return json.dumps(
        {
            "event": "webhookReceived",
            "instanceId": instance_id,
            "connectedPhone": "5511987654321",
            "isGroup": False,
            "messageId": message_id,
            "fromMe": False,
            "chat": {"id": "5511988887777", "profilePicture": ""},
            "sender": {"id": "5511988887777", "profilePicture": "", "pushName": "Cliente", "verifiedBizName": ""},
            "moment": 1_749_132_337,
            "msgContent": {"extendedTextMessage": {"text": text}},
        }
    ).encode()


async def in_pieces(body: bytes, size: int = 8192, pause: float = 0.002) -> AsyncIterator[bytes]:
    """The body as it really travels: several TCP writes, not one buffer."""
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(pause)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


async def test_wrong_or_missing_secret_is_404_and_stores_nothing(
    stack: Stack, http: httpx.AsyncClient, instance: str
) -> None:
    for url, headers in (
        (f"{stack.bridge_url}/webhooks/wapi/not-the-secret", JSON),
        (f"{stack.bridge_url}/webhooks/wapi", JSON),
        (f"{stack.bridge_url}/webhooks/wapi", {**JSON, "X-Webhook-Secret": "not-the-secret"}),
    ):
        answer = await http.post(url, content=status_body(instance), headers=headers)
        assert answer.status_code == 404, url
        assert stack.secret not in answer.text
    assert await stack.stored_events(events.c.instance_id == instance) == []


async def test_header_secret_is_an_alternative_to_the_path(
    stack: Stack, http: httpx.AsyncClient, instance: str
) -> None:
    answer = await http.post(
        f"{stack.bridge_url}/webhooks/wapi",
        content=status_body(instance),
        headers={**JSON, "X-Webhook-Secret": stack.secret},
    )
    assert answer.status_code == 200
    reply = answer.json()
    assert (reply["stored"], reply["route"], reply["reason"]) == (True, "MESSAGE_STATUS", "UNKNOWN_MESSAGE")
    (stored,) = await stack.stored_events(events.c.instance_id == instance)
    assert stored["id"] == reply["event_id"]
    assert stack.secret not in stored["headers"]  # the secret header is never stored
    assert "x-webhook-secret" not in json.loads(stored["headers"])


async def test_body_over_256_kib_is_413(stack: Stack, http: httpx.AsyncClient) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    answer = await http.post(stack.webhook_url, content=body, headers=JSON)
    assert answer.status_code == 413
    assert answer.json()["reason"] == "PAYLOAD_TOO_LARGE"
    assert await stack.stored_events(events.c.payload == body) == []


async def test_chunked_body_over_256_kib_is_413(stack: Stack, http: httpx.AsyncClient) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"  # no Content-Length: Transfer-Encoding: chunked
    answer = await http.post(stack.webhook_url, content=in_pieces(body), headers=JSON)
    assert answer.status_code == 413
    assert await stack.stored_events(events.c.route == "UNROUTABLE") == []


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_valid_webhook_arriving_in_several_writes_is_parsed(
    stack: Stack, http: httpx.AsyncClient, instance: str, framing: str
) -> None:
    body = received_body(instance, "Olá, " + "tudo certo com o pedido? " * 800)  # ~20 KB, well under the limit
    headers = dict(JSON)
    if framing == "content-length":
        headers["Content-Length"] = str(len(body))
    answer = await http.post(stack.webhook_url, content=in_pieces(body), headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["route"] == "RECEIVED"
    (stored,) = await stack.stored_events(events.c.id == answer.json()["event_id"])
    assert stored["payload"] == body


async def test_unsupported_content_type_is_415(stack: Stack, http: httpx.AsyncClient) -> None:
    body = b"<status>delivered</status>"
    answer = await http.post(stack.webhook_url, content=body, headers={"Content-Type": "application/xml"})
    assert answer.status_code == 415
    assert answer.json()["reason"] == "UNSUPPORTED_MEDIA_TYPE"
    assert await stack.stored_events(events.c.payload == body) == []


async def test_malformed_json_is_stored_and_acknowledged_202(
    stack: Stack, http: httpx.AsyncClient, instance: str
) -> None:
    raw = b'{"event": "webhookStatus", "instanceId": "' + instance.encode() + b'", "status": '
    answer = await http.post(stack.webhook_url, content=raw, headers=JSON)
    assert answer.status_code == 202
    reply = answer.json()
    assert (reply["stored"], reply["route"], reply["reason"]) == (True, "UNROUTABLE", "MALFORMED_JSON")
    (stored,) = await stack.stored_events(events.c.id == reply["event_id"])
    assert (stored["route"], stored["reason"]) == ("UNROUTABLE", "MALFORMED_JSON")
    assert stored["payload"] == raw  # kept byte for byte, for reconciliation


async def test_a_hand_posted_w_api_status_is_routed_applied_and_deduplicated(
    stack: Stack, http: httpx.AsyncClient, instance: str
) -> None:
    assert (await stack.add_instance(instance, "silent_stall")).state == CONNECTED
    msg = await stack.submit(text_request(instance))
    body = status_body(instance, message_id=msg.provider_message_id)
    first = await http.post(stack.webhook_url, content=body, headers=JSON)
    again = await http.post(stack.webhook_url, content=body, headers=JSON)
    assert (first.status_code, first.json()["reason"], first.json()["duplicate"]) == (200, "APPLIED", False)
    assert (again.status_code, again.json()["duplicate"], again.json()["event_id"]) == (
        200,
        True,
        first.json()["event_id"],
    )
    assert (await stack.message(msg.id)).state == DELIVERED
    # Not posted by the simulator, so the audit's receipt check does not apply here.
    assert stack.false_sent == []


async def test_metrics_and_healthz(stack: Stack, http: httpx.AsyncClient) -> None:
    assert (await stack.add_instance("METRICS-1", "healthy")).state == CONNECTED
    await stack.submit(text_request("METRICS-1"))
    await stack.add_instance("METRICS-2", "session_incomplete")
    await stack.refused(text_request("METRICS-2"))

    health = await http.get(f"{stack.bridge_url}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    metrics = await http.get(f"{stack.bridge_url}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    sends = [line for line in metrics.text.splitlines() if line.startswith("wapiguard_sends") and "{" in line]
    assert sends, metrics.text[:2000]
    assert any('outcome="sent"' in line for line in sends)
    assert any('outcome="blocked"' in line and 'reason="SESSION_INCOMPLETE"' in line for line in sends)
    assert "wapiguard_provider_duration" in metrics.text
    await stack.audit()
