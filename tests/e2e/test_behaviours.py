"""One scenario per W-API simulator behaviour, end to end: gRPC API → wapi-guard → real W-API client
→ simulator, and simulator webhooks → HTTP bridge. Each ends with Stack.audit(): what the caller
was told matches what the recipient would see, and no false SENT was reported."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from adapters.persistence.schema import events
from adapters.simulator import BEHAVIOURS
from services.api.wapiguard.v1 import common_pb2, send_pb2
from services.i18n import REASON_TEXT_PT_BR
from services.observability.logs import JsonFormatter
from statemachine.domain import Reason
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import (
    CONNECTED,
    DEGRADED,
    DELIVERED,
    DISCONNECTED,
    FAILED,
    PHONE,
    READ,
    RECIPIENT,
    SENT,
    SESSION_INCOMPLETE,
    STATE_NAME,
    Stack,
    applied_path,
    text_request,
)
from tests.integration.harness import rich_error

SESSION_INCOMPLETE_PT = "Instância conectada sem sessão válida. Reconecte por código de pareamento/telefone."
DOMAIN = "wapiguard.v1"


def send_endpoints(stack: Stack, instance_id: str) -> list[str]:
    return [str(s["endpoint"]) for s in stack.sim.sends(instance_id)]


# --- healthy -------------------------------------------------------------------------------------


async def test_healthy_instance_sends_and_follows_real_receipts_to_read(stack: Stack) -> None:
    h = await stack.add_instance("3B6XIW-ZTS923-GEAY6V", "healthy", phone=PHONE)
    assert (h.state, h.phone_number, h.reason, h.can_send) == (CONNECTED, PHONE, "PHONE_CONFIRMED", True)
    assert h.HasField("checked_at")

    request = text_request(
        "3B6XIW-ZTS923-GEAY6V", body="Olá! Pedido 42 confirmado.", key="order-42", to="+55 (15) 98112-1710"
    )
    sent = await stack.submit(request)
    assert sent.state == SENT
    assert sent.provider_message_id.startswith("3EB0")
    assert sent.to == RECIPIENT

    final = await stack.wait_state(sent.id, READ)
    assert applied_path(final) == ["PENDING", "SENT", "DELIVERED", "READ"]
    assert final.provider_message_id == sent.provider_message_id
    assert not final.failure_reason

    # Same idempotency key again: the same message, no second provider call.
    again = await stack.submit(request)
    assert again.id == sent.id

    sends = stack.sim.sends("3B6XIW-ZTS923-GEAY6V")
    assert len(sends) == 1
    assert sends[0]["endpoint"] == "/message/send-text"
    assert sends[0]["body"] == {"phone": RECIPIENT, "message": "Olá! Pedido 42 confirmado."}
    assert sends[0]["status"] == 200
    assert sends[0]["message_id"] == sent.provider_message_id
    send_requests = [r for r in stack.sim.requests if r.path.startswith("/message/")]
    assert [(r.method, r.query.get("instanceId"), r.has_valid_auth) for r in send_requests] == [
        ("POST", "3B6XIW-ZTS923-GEAY6V", True)
    ]
    await stack.audit()


async def test_receipts_racing_the_send_commit_are_not_lost(make_stack: StackFactory) -> None:
    """W-API can post `delivered`/`read` before wapi-guard has stored the send's answer.

    Such receipts are parked; the send path applies them, and the sweeper picks up any that
    lost the race with the SENT commit (seen on PostgreSQL). None may stay parked for good.
    """
    stack = await make_stack(sweep_interval=0.2, sim_options={"delivered_after": 0.0, "read_after": 0.0})
    assert (await stack.add_instance("FAST-1", "healthy")).state == CONNECTED
    sent = [await stack.submit(text_request("FAST-1", body=f"#{i}", key=f"fast-{i}")) for i in range(40)]
    await stack.webhooks_settled()  # every receipt answered 200: stored
    for msg in sent:
        final = await stack.wait_state(msg.id, READ)
        assert {h.to_state for h in final.history} >= {DELIVERED, READ}
    parked = await stack.stored_events(events.c.instance_id == "FAST-1", events.c.parked.is_(True))
    assert [(r["status"], r["provider_message_id"]) for r in parked] == []
    await stack.audit()


# --- session_incomplete --------------------------------------------------------------------------

EVERY_KIND: dict[str, dict[str, Any]] = {
    "text": {"text": send_pb2.TextContent(body="oi")},
    "image": {"image": send_pb2.MediaContent(url="https://cdn.example.com/p.jpg", caption="foto")},
    "audio": {"audio": send_pb2.MediaContent(url="https://cdn.example.com/a.ogg")},
    "video": {"video": send_pb2.MediaContent(url="https://cdn.example.com/v.mp4", caption="vídeo")},
    "document": {"document": send_pb2.DocumentContent(url="https://cdn.example.com/nf.pdf", file_name="nf.pdf")},
    "location": {
        "location": send_pb2.LocationContent(latitude=-23.5505, longitude=-46.6333, name="Loja", address="Av. Paulista")
    },
    "contact": {"contact": send_pb2.ContactContent(name="Suporte", phone="5511999990000")},
}


async def test_session_incomplete_blocks_every_kind_before_the_provider(stack: Stack) -> None:
    instance = "LITE-4IW93E-MGVYDW"
    h = await stack.add_instance(instance, "session_incomplete", plan="LITE")
    assert (h.state, h.reason, h.phone_number, h.can_send) == (SESSION_INCOMPLETE, "SESSION_INCOMPLETE", "", False)
    assert h.reason_message == SESSION_INCOMPLETE_PT

    for kind, content in EVERY_KIND.items():
        request = send_pb2.SendMessageRequest(instance_id=instance, to=RECIPIENT, idempotency_key=kind, **content)
        refused = await stack.refused(request)
        assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, kind
        assert (refused.reason, refused.rich.domain) == ("SESSION_INCOMPLETE", DOMAIN), kind
        assert refused.rich.localized == SESSION_INCOMPLETE_PT, kind
        assert refused.rich.metadata["instance_state"] == "SESSION_INCOMPLETE", kind
        assert refused.stored is not None, kind
        assert (refused.stored.state, refused.stored.failure_reason) == (FAILED, "SESSION_INCOMPLETE"), kind
        assert refused.stored.provider_message_id == "", kind
        assert common_pb2.MessageKind.Name(refused.stored.kind) == f"MESSAGE_KIND_{kind.upper()}"

    assert stack.sim.sends(instance) == []
    stored = [m for m in await stack.all_messages() if m.instance_id == instance]
    assert len(stored) == len(EVERY_KIND)
    assert {m.state for m in stored} == {FAILED}
    await stack.audit()


# --- silent_stall --------------------------------------------------------------------------------


async def test_silent_stall_is_detected_from_stuck_messages_and_blocks_sends(make_stack: StackFactory) -> None:
    window = 0.5
    stack = await make_stack(stuck_after=window, stall_threshold=3)
    instance = "STALL-ZTS923-GEAY6V"
    # A silently stalled session probes perfectly healthy: only the missing receipts tell.
    h = await stack.add_instance(instance, "silent_stall")
    assert (h.state, h.phone_number) == (CONNECTED, PHONE)

    sent = [await stack.submit(text_request(instance, body=f"#{i}", key=f"stall-{i}")) for i in range(3)]
    assert [m.state for m in sent] == [SENT] * 3
    assert all(m.provider_message_id for m in sent)
    # A sweep never marks a message younger than the window (on a quiet machine: none of them yet).
    stuck = await stack.app.jobs.sweep_once()
    swept_at = datetime.now(UTC)  # read after: the sweep's own clock is at most this
    assert all(m.sent_at is not None and (swept_at - m.sent_at).total_seconds() >= window for m in stuck)

    await asyncio.sleep(window + 0.15)
    # This sweep or the one that follows the connection's missed-event recovery marks them.
    await stack.app.jobs.sweep_once()

    listed = await stack.send.ListMessages(send_pb2.ListMessagesRequest(instance_id=instance, stuck_only=True))
    assert sorted(m.id for m in listed.messages) == sorted(m.id for m in sent)
    assert all(m.stuck and m.state == SENT for m in listed.messages)  # never claimed DELIVERED

    h = await stack.get_health(instance)
    assert (h.state, h.reason, h.can_send, h.stuck_messages) == (DEGRADED, "DELIVERY_STALLED", False, 3)
    assert h.phone_number == PHONE

    refused = await stack.refused(text_request(instance, body="#4", key="stall-4"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DELIVERY_STALLED")
    assert refused.rich.localized == REASON_TEXT_PT_BR[Reason.DELIVERY_STALLED]
    assert refused.stored is not None
    assert refused.stored.state == FAILED

    # A routine probe still says "connected with phone": it must not lift the stall.
    h = await stack.get_health(instance, refresh=True)
    assert (h.state, h.reason) == (DEGRADED, "DELIVERY_STALLED")
    await stack.refused(text_request(instance, body="#5", key="stall-5"))
    assert len(stack.sim.sends(instance)) == 3
    await stack.audit()


# --- timeout -------------------------------------------------------------------------------------


async def test_timeout_fails_the_send_once_and_degrades_keeping_the_phone(stack: Stack) -> None:
    instance = "SLOW-1"
    assert (await stack.add_instance(instance, "healthy")).state == CONNECTED
    stack.sim.set_behaviour(instance, "timeout")

    started = time.monotonic()
    refused = await stack.refused(text_request(instance, key="slow-1"))
    assert time.monotonic() - started < 3.0  # send_timeout=0.5, not the simulator's 30 s hang
    assert (refused.code, refused.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "PROVIDER_TIMEOUT")
    assert refused.stored is not None
    assert (refused.stored.state, refused.stored.failure_reason) == (FAILED, "PROVIDER_TIMEOUT")
    assert refused.stored.provider_message_id == ""
    await asyncio.sleep(0.3)
    assert send_endpoints(stack, instance) == ["/message/send-text"]  # exactly one request: no retry

    h = await stack.get_health(instance, refresh=True)
    assert (h.state, h.reason, h.can_send) == (DEGRADED, "TIMEOUT_OR_GATEWAY", False)
    assert h.phone_number == PHONE  # the last known phone is kept through gateway trouble

    refused = await stack.refused(text_request(instance, key="slow-2"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TIMEOUT_OR_GATEWAY")
    assert len(stack.sim.sends(instance)) == 1
    await stack.audit()


# --- gateway_error -------------------------------------------------------------------------------


async def test_gateway_error_probes_degrade_never_disconnect(stack: Stack) -> None:
    # Never seen before: gateway trouble on the first probe says nothing about the session.
    h = await stack.add_instance("GW-NEW", "gateway_error")
    assert (h.state, h.reason, h.can_send) == (DEGRADED, "TIMEOUT_OR_GATEWAY", False)

    assert (await stack.add_instance("GW-1", "healthy")).state == CONNECTED
    stack.sim.set_behaviour("GW-1", "gateway_error")
    for _ in range(3):  # each probe retries once: 502 HTML, 503 JSON, 504 HTML and 200 HTML all seen
        h = await stack.get_health("GW-1", refresh=True)
        assert (h.state, h.reason, h.phone_number) == (DEGRADED, "TIMEOUT_OR_GATEWAY", PHONE)
    probes = [
        r for r in stack.sim.requests if r.path == "/instance/status-instance" and r.query["instanceId"] == "GW-1"
    ]
    assert len(probes) >= 5

    refused = await stack.refused(text_request("GW-1", key="gw-blocked"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TIMEOUT_OR_GATEWAY")
    assert stack.sim.sends("GW-1") == []

    # The gateway recovers: the next probe trusts the instance again.
    stack.sim.set_behaviour("GW-1", "healthy")
    h = await stack.get_health("GW-1", refresh=True)
    assert (h.state, h.phone_number) == (CONNECTED, PHONE)
    await stack.audit()


async def test_gateway_error_sends_degrade_after_the_threshold_then_block(make_stack: StackFactory) -> None:
    stack = await make_stack(gateway_failure_threshold=4)
    instance = "GW-SEND"
    assert (await stack.add_instance(instance, "healthy")).state == CONNECTED
    stack.sim.set_behaviour(instance, "gateway_error")

    # 502 HTML, 503 JSON, 504 HTML and a 200 with an HTML page: none of them is a send.
    for i in range(4):
        refused = await stack.refused(text_request(instance, key=f"gw-{i}"))
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "PROVIDER_UNAVAILABLE"), i
        assert refused.stored is not None
        assert refused.stored.state == FAILED
        assert refused.stored.provider_message_id == ""
    assert [s["status"] for s in stack.sim.sends(instance)] == [502, 503, 504, 200]

    h = await stack.get_health(instance)
    assert (h.state, h.reason, h.can_send, h.phone_number) == (DEGRADED, "TIMEOUT_OR_GATEWAY", False, PHONE)
    refused = await stack.refused(text_request(instance, key="gw-next"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TIMEOUT_OR_GATEWAY")
    assert len(stack.sim.sends(instance)) == 4  # blocked before the provider
    await stack.audit()


# --- disconnected --------------------------------------------------------------------------------


async def test_disconnected_instance_is_blocked(stack: Stack) -> None:
    h = await stack.add_instance("OFF-1", "disconnected")
    assert (h.state, h.reason, h.can_send) == (DISCONNECTED, "INSTANCE_DISCONNECTED", False)

    refused = await stack.refused(text_request("OFF-1"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSTANCE_DISCONNECTED")
    assert refused.rich.localized == REASON_TEXT_PT_BR[Reason.INSTANCE_DISCONNECTED]
    assert refused.stored is not None
    assert refused.stored.state == FAILED
    assert stack.sim.sends("OFF-1") == []
    await stack.audit()


async def test_disconnection_webhook_blocks_a_connected_instance(stack: Stack) -> None:
    assert (await stack.add_instance("OFF-2", "healthy")).state == CONNECTED
    stack.sim.set_behaviour("OFF-2", "disconnected")
    await stack.sim.emit("OFF-2", "disconnected")
    h = await stack.get_health("OFF-2")
    assert (h.state, h.reason) == (DISCONNECTED, "INSTANCE_DISCONNECTED")
    refused = await stack.refused(text_request("OFF-2"))
    assert refused.reason == "INSTANCE_DISCONNECTED"
    assert stack.sim.sends("OFF-2") == []
    await stack.audit()


# --- token_invalid / deleted ---------------------------------------------------------------------

DEAD = pytest.mark.parametrize(
    ("behaviour", "reason"), [("token_invalid", "TOKEN_INVALID"), ("deleted", "INSTANCE_NOT_FOUND")]
)


@DEAD
async def test_dead_credentials_found_by_the_probe_block_sends(stack: Stack, behaviour: str, reason: str) -> None:
    h = await stack.add_instance("DEAD-1", behaviour)
    assert (h.state, h.reason, h.can_send) == (DISCONNECTED, reason, False)

    refused = await stack.refused(text_request("DEAD-1"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert refused.rich.localized == REASON_TEXT_PT_BR[Reason(reason)]
    assert stack.sim.sends("DEAD-1") == []
    assert stack.tokens["DEAD-1"] not in refused.wire_text()
    await stack.audit()


@DEAD
async def test_credentials_dying_between_probes_fail_one_send_then_block(
    stack: Stack, behaviour: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    instance = "DEAD-2"
    assert (await stack.add_instance(instance, "healthy")).state == CONNECTED
    token = stack.tokens[instance]
    stack.sim.set_behaviour(instance, behaviour)

    first = await stack.refused(text_request(instance, key="first"))
    assert (first.code, first.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert first.stored is not None
    assert (first.stored.state, first.stored.failure_reason) == (FAILED, reason)
    assert len(stack.sim.sends(instance)) == 1

    # The send's 401/404 is a health signal: no probe needed to stop trusting the instance.
    h = await stack.get_health(instance)
    assert (h.state, h.reason, h.can_send) == (DISCONNECTED, reason, False)

    second = await stack.refused(text_request(instance, key="second"))
    assert (second.code, second.reason) == (grpc.StatusCode.FAILED_PRECONDITION, reason)
    assert second.rich.metadata["instance_state"] == "DISCONNECTED"
    assert len(stack.sim.sends(instance)) == 1  # blocked without reaching the provider

    for refused in (first, second):
        assert token not in refused.wire_text()
    assert token not in str(h)
    service_logs = [r.getMessage() + repr(vars(r)) for r in caplog.records if r.name.startswith("wapi_guard")]
    assert service_logs
    assert not [line for line in service_logs if token in line]
    await stack.audit()


async def test_wrong_registered_token_is_token_invalid(stack: Stack) -> None:
    h = await stack.add_instance("DEAD-3", "healthy", registered_token="tok-not-the-right-one-123")
    assert (h.state, h.reason) == (DISCONNECTED, "TOKEN_INVALID")
    assert all(not r.has_valid_auth for r in stack.sim.requests)
    await stack.audit()


# --- accepted without an id / with an error ------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("accepted_without_id", "PROVIDER_NO_MESSAGE_ID"), ("accepted_with_error", "PROVIDER_ERROR")],
)
async def test_2xx_that_is_not_a_send_is_never_reported_sent(stack: Stack, behaviour: str, reason: str) -> None:
    instance = "ODD-2XX"
    assert (await stack.add_instance(instance, behaviour)).state == CONNECTED
    request = text_request(instance, key="odd-1")

    refused = await stack.refused(request)
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, reason)
    assert refused.rich.localized == REASON_TEXT_PT_BR[Reason(reason)]
    assert refused.stored is not None
    assert (refused.stored.state, refused.stored.failure_reason) == (FAILED, reason)
    assert refused.stored.provider_message_id == ""  # no id invented
    assert refused.stored.failure_detail
    assert [s["status"] for s in stack.sim.sends(instance)] == [200]

    # The same request again (a client retry with its key) answers the same, without a second POST.
    again = await stack.refused(request)
    assert (again.reason, again.rich.metadata["message_id"]) == (reason, refused.rich.metadata["message_id"])
    assert len(stack.sim.sends(instance)) == 1
    await stack.audit()


async def test_delivered_is_never_reported_for_a_message_the_simulator_did_not_deliver(stack: Stack) -> None:
    """The only source of DELIVERED is a provider receipt: a silent instance's message stays SENT."""
    assert (await stack.add_instance("QUIET-1", "silent_stall")).state == CONNECTED
    sent = await stack.submit(text_request("QUIET-1"))
    await asyncio.sleep(0.3)  # longer than the simulator's read_after
    msg = await stack.message(sent.id)
    assert msg.state == SENT
    assert DELIVERED not in [h.to_state for h in msg.history]
    await stack.audit()


# --- secrets in logs -----------------------------------------------------------------------------


async def test_instance_token_never_reaches_the_service_log_output(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert (await stack.add_instance("LOGS-1", "healthy")).state == CONNECTED
    token = stack.tokens["LOGS-1"]
    stack.sim.set_behaviour("LOGS-1", "token_invalid")
    await stack.refused(text_request("LOGS-1"))
    # Formatted exactly as `wapi-guard serve --log-level DEBUG` would write them (JSON lines, scrubbed).
    formatter = JsonFormatter()
    leaked = [record.name for record in caplog.records if token in formatter.format(record)]
    assert leaked == []
    await stack.audit()


# --- the scoreboard ------------------------------------------------------------------------------


async def test_scoreboard_no_false_sent_across_every_behaviour(stack: Stack) -> None:
    """Every behaviour side by side on one server, two sends each: a SENT is only ever reported
    for an instance the system had no signal against, and only the healthy one reaches READ."""
    false_sent: list[str] = []
    told: dict[str, list[str]] = {}
    for behaviour in BEHAVIOURS:
        instance = f"SCORE-{behaviour.replace('_', '-').upper()}"
        await stack.add_instance(instance, behaviour)
        signal = False
        for attempt in range(2):
            signal = signal or not (await stack.get_health(instance)).can_send
            try:
                msg = await stack.submit(text_request(instance, key=f"{behaviour}-{attempt}"))
            except grpc.aio.AioRpcError as error:
                told.setdefault(behaviour, []).append(rich_error(error).reason)
                signal = True  # the caller was told: it failed
                continue
            told.setdefault(behaviour, []).append(STATE_NAME[msg.state])
            if signal and behaviour != "healthy":
                false_sent.append(f"{behaviour}: SENT after a signal that it cannot deliver")

    healthy = [m for m in await stack.all_messages() if m.instance_id == "SCORE-HEALTHY"]
    for m in healthy:
        await stack.wait_state(m.id, READ)
    assert told["healthy"] == ["SENT", "SENT"]
    assert told["silent_stall"] == ["SENT", "SENT"]  # no signal yet: the sweeper's job (see above)
    assert told["session_incomplete"] == ["SESSION_INCOMPLETE"] * 2
    assert told["token_invalid"] == ["TOKEN_INVALID"] * 2
    assert told["deleted"] == ["INSTANCE_NOT_FOUND"] * 2
    assert told["disconnected"] == ["INSTANCE_DISCONNECTED"] * 2
    assert told["timeout"] == told["gateway_error"] == ["TIMEOUT_OR_GATEWAY"] * 2
    assert told["accepted_without_id"] == ["PROVIDER_NO_MESSAGE_ID"] * 2
    assert told["accepted_with_error"] == ["PROVIDER_ERROR"] * 2
    assert false_sent == []
    await stack.audit()
