"""WebhookService: connection truth, status ordering, duplicates, event-less bodies, raw storage."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from adapters.persistence.schema import chat_statuses, events
from services.api.wapiguard.v1 import common_pb2, instance_health_pb2, send_pb2, webhook_pb2
from tests.integration.harness import Harness, rich_error

SENT, DELIVERED, READ, PLAYED = (
    common_pb2.MESSAGE_STATE_SENT,
    common_pb2.MESSAGE_STATE_DELIVERED,
    common_pb2.MESSAGE_STATE_READ,
    common_pb2.MESSAGE_STATE_PLAYED,
)


async def health(guard: Harness, instance_id: str) -> common_pb2.InstanceHealth:
    return await guard.health.GetInstanceHealth(instance_health_pb2.GetInstanceHealthRequest(instance_id=instance_id))


async def sent_message(guard: Harness, instance_id: str = "wh-1") -> common_pb2.Message:
    await guard.register(instance_id)
    await guard.connect(instance_id)
    return await guard.send.SendMessage(
        send_pb2.SendMessageRequest(instance_id=instance_id, to="5515981121710", text=send_pb2.TextContent(body="oi"))
    )


def status(instance_id: str, message_id: str, word: str, moment: int = 1_749_132_400) -> dict[str, object]:
    return {
        "event": "webhookStatus",
        "instanceId": instance_id,
        "messageId": message_id,
        "status": word,
        "moment": moment,
    }


async def stored_events(guard: Harness) -> list[dict[str, object]]:
    async with guard.repo.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(select(events).order_by(events.c.received_at))]


async def test_connection_without_phone_is_session_incomplete_never_connected(guard: Harness) -> None:
    await guard.register("c-1")
    reply = await guard.webhook({"event": "webhookConnected", "instanceId": "c-1", "connected": True, "moment": 1})
    assert reply.route == webhook_pb2.EVENT_ROUTE_CONNECTION
    assert [t.to_state for t in reply.instance_transitions] == [common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE]
    h = await health(guard, "c-1")
    assert h.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE
    assert h.reason == "SESSION_INCOMPLETE"
    assert h.phone_number == ""
    assert not h.can_send


async def test_connection_without_phone_downgrades_a_connected_instance(guard: Harness) -> None:
    await guard.register("c-2")
    await guard.connect("c-2", phone="5511999990000")
    assert (await health(guard, "c-2")).state == common_pb2.INSTANCE_STATE_CONNECTED
    # The older event name and the data-nested shape (CRM webhook parsers) must be read the same way.
    await guard.webhook({"event": "connection", "instanceId": "c-2", "data": {"connected": True}, "moment": 2})
    h = await health(guard, "c-2")
    assert h.state == common_pb2.INSTANCE_STATE_SESSION_INCOMPLETE
    assert h.phone_number == ""


async def test_connection_with_phone_connects_and_disconnection_disconnects(guard: Harness) -> None:
    await guard.register("c-3")
    await guard.webhook(
        {"event": "connection", "instanceId": "c-3", "data": {"connected": True, "phone": "5511977776666"}}
    )
    h = await health(guard, "c-3")
    assert (h.state, h.phone_number, h.can_send) == (
        common_pb2.INSTANCE_STATE_CONNECTED,
        "5511977776666",
        True,
    )
    reply = await guard.webhook({"event": "webhookDisconnected", "instanceId": "c-3", "connected": False})
    assert reply.route == webhook_pb2.EVENT_ROUTE_DISCONNECTION
    assert (await health(guard, "c-3")).state == common_pb2.INSTANCE_STATE_DISCONNECTED


async def test_statuses_move_the_message_forward(guard: Harness) -> None:
    msg = await sent_message(guard)
    for word, expected in (("delivered", DELIVERED), ("read", READ), ("played", PLAYED)):
        reply = await guard.webhook(status("wh-1", msg.provider_message_id, word))
        assert reply.route == webhook_pb2.EVENT_ROUTE_MESSAGE_STATUS
        assert [t.message_id for t in reply.message_transitions] == [msg.id]
        got = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=msg.id))
        assert got.state == expected


async def test_out_of_order_read_before_delivered_ends_read_with_full_history(guard: Harness) -> None:
    msg = await sent_message(guard)
    await guard.webhook(status("wh-1", msg.provider_message_id, "read"))
    late = await guard.webhook(status("wh-1", msg.provider_message_id, "delivered"))
    assert late.reason == "STALE_STATUS"
    assert [t.change.applied for t in late.message_transitions] == [False]
    got = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=msg.id))
    assert got.state == READ
    assert [(h.to_state, h.applied) for h in got.history][-2:] == [(READ, True), (DELIVERED, False)]


async def test_duplicated_status_is_applied_once(guard: Harness) -> None:
    msg = await sent_message(guard)
    first = await guard.webhook(status("wh-1", msg.provider_message_id, "delivered", moment=10))
    second = await guard.webhook(status("wh-1", msg.provider_message_id, "delivered", moment=11))
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.event_id == first.event_id
    assert list(second.message_transitions) == []
    got = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=msg.id))
    assert [h.to_state for h in got.history].count(DELIVERED) == 1
    rows = [e for e in await stored_events(guard) if e["route"] == "MESSAGE_STATUS"]
    assert len(rows) == 1
    assert rows[0]["duplicates"] == 1


async def test_eventless_status_body_is_routed_and_stored_not_dropped(guard: Harness) -> None:
    await guard.register("ev-1")
    body = {
        "instanceId": "ev-1",
        "connectedPhone": "5511999990000",
        "connectedLid": "176488829694091@lid",
        "chat": {"id": "5515981121710"},
        "status": "composing",
        "moment": 1_749_132_337,
    }
    reply = await guard.webhook(body)
    assert reply.route == webhook_pb2.EVENT_ROUTE_CHAT_STATUS
    assert reply.instance_id == "ev-1"
    async with guard.repo.engine.connect() as conn:
        rows = [dict(r._mapping) for r in await conn.execute(select(chat_statuses))]
    assert len(rows) == 1
    assert (rows[0]["instance_id"], rows[0]["chat_id"], rows[0]["status"]) == (
        "ev-1",
        "5515981121710",
        "composing",
    )
    assert rows[0]["connected_lid"] == "176488829694091@lid"
    assert [e["route"] for e in await stored_events(guard)] == ["CHAT_STATUS"]


async def test_eventless_body_with_message_id_moves_the_message(guard: Harness) -> None:
    msg = await sent_message(guard, "ev-2")
    body = {
        "instanceId": "ev-2",
        "connectedPhone": "5511999990000",
        "connectedLid": "1@lid",
        "chat": {"id": "5515981121710", "messageId": msg.provider_message_id},
        "status": "read",
        "moment": 5,
    }
    reply = await guard.webhook(body)
    assert reply.route == webhook_pb2.EVENT_ROUTE_CHAT_STATUS
    got = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=msg.id))
    assert got.state == READ


async def test_status_arriving_before_sent_is_recorded_is_applied_later(guard: Harness) -> None:
    """The provider can post 'delivered' before our SENT update commits: nothing may be lost."""
    import asyncio

    await guard.register("race-1")
    await guard.connect("race-1")
    guard.provider.send_gate = asyncio.Event()
    guard.provider.send_result = lambda _m: __import__("statemachine.domain", fromlist=["x"]).SendOutcome(
        provider_message_id="3EB0EARLY"
    )
    pending = asyncio.ensure_future(
        guard.send.SendMessage(
            send_pb2.SendMessageRequest(instance_id="race-1", to="5515981121710", text=send_pb2.TextContent(body="x"))
        )
    )
    await asyncio.sleep(0.2)
    early = await guard.webhook(status("race-1", "3EB0EARLY", "delivered"))
    assert early.reason == "UNKNOWN_MESSAGE"
    guard.provider.send_gate.set()
    sent = await pending
    got = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=sent.id))
    assert got.state == DELIVERED


async def test_every_body_is_stored_raw_even_malformed(guard: Harness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.webhook(b'{"event": "webhookStatus", "instanceId": ')
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.metadata["event_reason"] == "MALFORMED_JSON"
    unknown = await guard.webhook({"event": "somethingNew", "instanceId": "x-1"})
    assert unknown.route == webhook_pb2.EVENT_ROUTE_UNROUTABLE
    assert unknown.reason.startswith("UNKNOWN_EVENT")
    rows = await stored_events(guard)
    assert [(r["route"], r["reason"]) for r in rows] == [
        ("UNROUTABLE", "MALFORMED_JSON"),
        ("UNROUTABLE", "UNKNOWN_EVENT:somethingNew"),
    ]
    assert rows[0]["payload"] == b'{"event": "webhookStatus", "instanceId": '


async def test_status_for_unknown_message_and_instance_is_kept(guard: Harness) -> None:
    reply = await guard.webhook(status("ghost", "3EB0NOPE", "read"))
    assert reply.reason == "UNKNOWN_MESSAGE"
    reply = await guard.webhook({"event": "webhookConnected", "instanceId": "ghost", "connectedPhone": "5511999990000"})
    assert reply.reason == "UNKNOWN_INSTANCE"
    assert len(await stored_events(guard)) == 2


async def test_batch_reports_each_item(guard: Harness) -> None:
    import json

    await guard.register("b-1")
    reply = await guard.webhooks.IngestEvents(
        webhook_pb2.IngestEventsRequest(
            events=[
                webhook_pb2.IngestEventRequest(
                    payload=json.dumps(
                        {"event": "webhookConnected", "instanceId": "b-1", "connectedPhone": "5511999990000"}
                    ).encode()
                ),
                webhook_pb2.IngestEventRequest(payload=b"not json"),
                webhook_pb2.IngestEventRequest(
                    payload=json.dumps({"event": "webhookDisconnected", "instanceId": "b-1"}).encode()
                ),
            ]
        )
    )
    assert [r.route for r in reply.results] == [
        webhook_pb2.EVENT_ROUTE_CONNECTION,
        webhook_pb2.EVENT_ROUTE_UNROUTABLE,
        webhook_pb2.EVENT_ROUTE_DISCONNECTION,
    ]
    assert reply.results[1].reason == "MALFORMED_JSON"
    assert (await health(guard, "b-1")).state == common_pb2.INSTANCE_STATE_DISCONNECTED


async def test_secret_headers_are_not_stored(guard: Harness) -> None:
    await guard.webhooks.IngestEvent(
        webhook_pb2.IngestEventRequest(
            payload=b'{"event": "webhookReceived", "instanceId": "h-1"}',
            headers={
                "Authorization": "Bearer sk-live-abcdef",
                "X-Webhook-Secret": "s3cr3t-value",
                "User-Agent": "W-API",
            },
        )
    )
    rows = await stored_events(guard)
    headers = str(rows[0]["headers"])
    assert "sk-live-abcdef" not in headers
    assert "s3cr3t-value" not in headers
    assert "W-API" in headers


async def test_a_delivery_from_the_phone_with_a_lone_surrogate_is_stored_and_logged(guard: Harness) -> None:
    """A `\\ud800` escape in a body that goes into the change log: OK, stored, readable, never 'storage down'."""
    await guard.register("surrogate-1")
    body = b'{"event": "webhookDelivery", "instanceId": "surrogate-1", "x": "\\ud800", "fromMe": true}'
    reply = await guard.webhook(body)
    assert reply.event_id
    assert len(await stored_events(guard)) == 1
    page = await guard.repo.read_changes(None, limit=50)
    assert any(c.instance_id == "surrogate-1" for c in page.changes)
