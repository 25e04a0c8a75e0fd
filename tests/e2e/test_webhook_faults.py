"""Webhook faults, posted by the simulator (sim.emit) to the real HTTP bridge.

The instance under test answers sends like W-API does but sends no receipts of its own
(behaviour `silent_stall`, no sweeper running), so every receipt here is one the test emitted.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapters.persistence.schema import chat_statuses, events
from services.api.wapiguard.v1 import common_pb2
from tests.e2e.stack import (
    CONNECTED,
    DELIVERED,
    DISCONNECTED,
    PHONE,
    READ,
    SENT,
    SESSION_INCOMPLETE,
    Stack,
    applied_path,
    text_request,
)

INSTANCE = "HOOK-ZTS923-GEAY6V"


async def sent_message(stack: Stack, key: str = "m1") -> common_pb2.Message:
    if INSTANCE not in stack.sim.instance_ids():
        assert (await stack.add_instance(INSTANCE, "silent_stall")).state == CONNECTED
    msg = await stack.submit(text_request(INSTANCE, key=key))
    assert msg.state == SENT
    return msg


def bridge_answers(stack: Stack) -> list[int | None]:
    return [post["status"] for post in stack.sim.webhook_posts]


async def test_duplicate_status_is_applied_once(stack: Stack) -> None:
    msg = await sent_message(stack)
    bodies = await stack.sim.emit(INSTANCE, "duplicate_status", message_id=msg.provider_message_id, status="delivered")
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert bridge_answers(stack) == [200, 200]  # a re-delivery is acknowledged, never an error

    final = await stack.message(msg.id)
    assert final.state == DELIVERED
    assert applied_path(final) == ["PENDING", "SENT", "DELIVERED"]
    assert [h.to_state for h in final.history].count(DELIVERED) == 1
    stored = await stack.stored_events(events.c.provider_message_id == msg.provider_message_id)
    assert [(e["status"], e["duplicates"]) for e in stored] == [("DELIVERED", 1)]
    await stack.audit()


async def test_out_of_order_read_then_delivered_ends_read(stack: Stack) -> None:
    msg = await sent_message(stack)
    bodies = await stack.sim.emit(INSTANCE, "out_of_order", message_id=msg.provider_message_id)
    assert [b["status"] for b in bodies] == ["read", "delivered"]
    assert bridge_answers(stack) == [200, 200]

    final = await stack.message(msg.id)
    assert final.state == READ
    assert applied_path(final) == ["PENDING", "SENT", "READ"]  # READ may come without DELIVERED
    late = [h for h in final.history if h.to_state == DELIVERED]
    assert len(late) == 1
    assert (late[0].applied, late[0].reason, late[0].source) == (False, "STALE_STATUS", "webhook")
    stored = {
        e["status"]: e["reason"]
        for e in await stack.stored_events(events.c.provider_message_id == msg.provider_message_id)
    }
    assert stored == {"READ": "APPLIED", "DELIVERED": "STALE_STATUS"}
    await stack.audit()


async def test_eventless_body_is_stored_as_chat_status(stack: Stack) -> None:
    await sent_message(stack)
    (body,) = await stack.sim.emit(INSTANCE, "eventless", chat="5511988887777", status="available")
    assert "event" not in body
    assert bridge_answers(stack) == [200]

    (event,) = await stack.stored_events(events.c.instance_id == INSTANCE)
    assert event["route"] == "CHAT_STATUS"
    assert event["reason"] != "UNROUTABLE"
    (chat,) = await stack.rows(chat_statuses, chat_statuses.c.event_id == event["id"])
    assert chat["event_id"] == event["id"]
    assert (chat["instance_id"], chat["chat_id"], chat["status"]) == (INSTANCE, "5511988887777", "available")
    assert (chat["connected_phone"], chat["connected_lid"]) == (PHONE, body["connectedLid"])
    # Telemetry only: the instance is untouched, but the event counts as a sign of life.
    h = await stack.wait_health(INSTANCE, lambda h: h.HasField("last_event_at"), "last_event_at recorded")
    assert h.state == CONNECTED
    await stack.audit()


async def test_connection_events_decide_whether_sends_may_go(stack: Stack) -> None:
    await sent_message(stack, key="before")

    # "Connected" without a phone on a CONNECTED instance: the incomplete session, sends blocked.
    await stack.sim.emit(INSTANCE, "connected_without_phone")
    h = await stack.get_health(INSTANCE)
    assert (h.state, h.reason, h.phone_number, h.can_send) == (SESSION_INCOMPLETE, "SESSION_INCOMPLETE", "", False)
    before = len(stack.sim.sends(INSTANCE))
    refused = await stack.refused(text_request(INSTANCE, key="while-incomplete"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_INCOMPLETE")
    assert len(stack.sim.sends(INSTANCE)) == before

    # Connected with a phone: really connected again, sends go out.
    await stack.sim.emit(INSTANCE, "connected", phone="5511912345678")
    h = await stack.get_health(INSTANCE)
    assert (h.state, h.reason, h.phone_number, h.can_send) == (CONNECTED, "PHONE_CONFIRMED", "5511912345678", True)
    assert (await stack.submit(text_request(INSTANCE, key="after"))).state == SENT

    await stack.sim.emit(INSTANCE, "disconnected")
    assert (await stack.get_health(INSTANCE)).state == DISCONNECTED
    assert bridge_answers(stack) == [200, 200, 200]
    await stack.audit()


async def test_delivery_and_received_events_do_not_fake_a_receipt(stack: Stack) -> None:
    msg = await sent_message(stack)
    # webhookDelivery means "left the phone", not "reached the recipient".
    await stack.sim.emit(INSTANCE, "delivery", message_id=msg.provider_message_id, text="oi")
    await stack.sim.emit(INSTANCE, "received", sender="5511988887777", text="chegou?")
    assert bridge_answers(stack) == [200, 200]
    assert (await stack.message(msg.id)).state == SENT
    routes = sorted(e["route"] for e in await stack.stored_events(events.c.instance_id == INSTANCE))
    assert routes == ["DELIVERY", "RECEIVED"]
    await stack.audit()


@pytest.mark.parametrize("status", ["delivered", "read", "played"])
async def test_every_receipt_word_moves_the_message_forward(stack: Stack, status: str) -> None:
    msg = await sent_message(stack)
    await stack.sim.emit(INSTANCE, "status", message_id=msg.provider_message_id, status=status)
    final = await stack.message(msg.id)
    assert common_pb2.MessageState.Name(final.state) == f"MESSAGE_STATE_{status.upper()}"
    await stack.audit()


async def test_concurrent_redeliveries_are_applied_once(stack: Stack) -> None:
    """W-API (or a proxy in front of us) may re-deliver the same receipt in parallel."""
    msg = await sent_message(stack)
    await asyncio.gather(
        *(
            stack.sim.emit(INSTANCE, "duplicate_status", message_id=msg.provider_message_id, status="delivered")
            for _ in range(4)
        )
    )
    assert bridge_answers(stack) == [200] * 8
    final = await stack.message(msg.id)
    assert final.state == DELIVERED
    assert [h.to_state for h in final.history].count(DELIVERED) == 1
    stored = await stack.stored_events(events.c.provider_message_id == msg.provider_message_id)
    assert [(e["status"], e["duplicates"]) for e in stored] == [("DELIVERED", 7)]
    await stack.audit()
