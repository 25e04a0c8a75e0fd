"""Contract tests of the Z-API and Evolution adapters against the documented shapes (see
docs/providers.md), with the variants marked uncertain accepted: webhook dialects (pure) and the
HTTP clients against the dialect simulator on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from adapters.evolution import webhooks as evo_hooks
from adapters.evolution.client import EvolutionProvider
from adapters.provider_http import Answer
from adapters.simulator.dialects import EVOLUTION, ZAPI, DialectSimulator
from adapters.zapi import client as zapi_client
from adapters.zapi import webhooks as zapi_hooks
from adapters.zapi.client import ZapiProvider
from statemachine.domain import Credentials, MessageKind, MessageState, OutboundMessage, Reason, Text
from statemachine.events import EventReason, Route

PHONE = "5511987654321"
TOKEN = "tok-SECRET-0123456789"
CLIENT_TOKEN = "acct-SECRET-abcdef"


def raw(body: object) -> bytes:
    return json.dumps(body).encode()


# --- Z-API webhooks ----------------------------------------------------------------------------


def test_zapi_status_with_several_ids_is_one_event_per_message() -> None:
    body = {
        "instanceId": "3C0E",
        "status": "READ",
        "ids": ["A1", "B2", "C3"],
        "momment": 1632234645000,
        "phone": "5544999999999",
        "type": "MessageStatusCallback",
        "isGroup": False,
    }
    events = [zapi_hooks.parse(part) for part in zapi_hooks.split(raw(body))]
    assert [(e.route, e.provider_message_id, e.status) for e in events] == [
        (Route.MESSAGE_STATUS, mid, MessageState.READ) for mid in ("A1", "B2", "C3")
    ]
    assert len({e.dedupe_key for e in events}) == 3
    assert events[0].moment is not None
    assert events[0].moment.year == 2021


def test_zapi_read_by_me_is_kept_not_applied() -> None:
    body = {"instanceId": "3C0E", "status": "READ_BY_ME", "ids": ["A1"], "type": "MessageStatusCallback"}
    event = zapi_hooks.parse(raw(body))
    assert event.status is None
    assert event.route is Route.PRESENCE


@pytest.mark.parametrize(("status", "state"), [("SENT", "SENT"), ("RECEIVED", "DELIVERED"), ("PLAYED", "PLAYED")])
def test_zapi_status_words(status: str, state: str) -> None:
    event = zapi_hooks.parse(raw({"instanceId": "I", "status": status, "ids": ["A1"], "type": "MessageStatusCallback"}))
    assert event.status is MessageState(state)


def test_zapi_send_webhook_acks_or_fails_with_the_normalized_reason() -> None:
    ok = {"phone": "554499999999", "messageId": "A800", "instanceId": "I", "zaapId": "Z", "type": "DeliveryCallback"}
    event = zapi_hooks.parse(raw(ok))
    assert (event.route, event.status, event.provider_message_id) == (Route.MESSAGE_STATUS, MessageState.SENT, "A800")
    failed = zapi_hooks.parse(raw(ok | {"error": "Phone number does not exist"}))
    assert (failed.status, failed.failure_reason, failed.failure_detail) == (
        MessageState.FAILED,
        "NOT_ON_WHATSAPP",
        "Phone number does not exist",
    )


def test_zapi_connected_callback_without_phone_carries_no_phone() -> None:
    event = zapi_hooks.parse(raw({"type": "ConnectedCallback", "connected": True, "instanceId": "I", "momment": 1}))
    assert (event.route, event.connected, event.phone) == (Route.CONNECTION, True, None)
    with_phone = zapi_hooks.parse(
        raw({"type": "ConnectedCallback", "connected": True, "instanceId": "I", "phone": PHONE})
    )
    assert with_phone.phone == PHONE


def test_zapi_inbound_and_phone_sent() -> None:
    inbound = {"type": "ReceivedCallback", "instanceId": "I", "messageId": "M1", "phone": "5511", "fromMe": False}
    assert zapi_hooks.parse(raw(inbound)).route is Route.RECEIVED
    mine = zapi_hooks.parse(raw(inbound | {"fromMe": True}))
    assert (mine.route, mine.from_api) == (Route.DELIVERY, False)


def test_zapi_waiting_message_is_a_session_signal_on_the_inbound_event() -> None:
    """`waitingMessage: true` (the phone could not decrypt it) stays an inbound message and carries
    WAITING_FOR_MESSAGE; a normal inbound one, or the flag false/absent/not a bool, carries nothing."""
    inbound = {"type": "ReceivedCallback", "instanceId": "I", "messageId": "M1", "phone": "5511", "fromMe": False}
    waiting = zapi_hooks.parse(raw(inbound | {"waitingMessage": True}))
    assert (waiting.route, waiting.failure_reason) == (Route.RECEIVED, Reason.WAITING_FOR_MESSAGE.value)
    for flag in (False, "true", None, 1):
        assert zapi_hooks.parse(raw(inbound | {"waitingMessage": flag})).failure_reason == "", flag
    assert zapi_hooks.parse(raw(inbound)).failure_reason == ""


def test_zapi_bad_bodies_are_unroutable_with_a_reason() -> None:
    assert zapi_hooks.parse(b"{not json").reason == EventReason.MALFORMED_JSON
    assert zapi_hooks.parse(b"[1]").reason == EventReason.NOT_AN_OBJECT
    assert zapi_hooks.parse(raw({"instanceId": "I"})).reason == EventReason.NO_EVENT_KEY
    assert zapi_hooks.parse(raw({"type": "Nope", "instanceId": "I"})).route is Route.UNROUTABLE
    assert zapi_hooks.split(b"{not json") == [b"{not json"]


# --- Evolution webhooks ------------------------------------------------------------------------


def envelope(event: str, data: dict[str, object]) -> dict[str, object]:
    return {"event": event, "instance": "inst", "data": data, "date_time": "x", "apikey": TOKEN}


@pytest.mark.parametrize("name", ["messages.update", "MESSAGES_UPDATE"])
def test_evolution_status_update_either_event_spelling(name: str) -> None:
    body = envelope(name, {"keyId": "3EB0", "remoteJid": "x@s.whatsapp.net", "fromMe": True, "status": "DELIVERY_ACK"})
    event = evo_hooks.parse(raw(body))
    assert (event.route, event.provider_message_id, event.status) == (
        Route.MESSAGE_STATUS,
        "3EB0",
        MessageState.DELIVERED,
    )
    # The key.id variant (older payloads) is read too.
    variant = envelope(name, {"key": {"id": "3EB1"}, "status": "SERVER_ACK"})
    assert evo_hooks.parse(raw(variant)).provider_message_id == "3EB1"


def test_evolution_apikey_never_stored() -> None:
    (part,) = evo_hooks.split(raw(envelope("messages.upsert", {"key": {"id": "M", "fromMe": False}})))
    assert TOKEN.encode() not in part
    assert evo_hooks.parse(part).route is Route.RECEIVED


def test_evolution_connection_update_needs_wuid_and_status_instance_logged_out() -> None:
    open_ = evo_hooks.parse(raw(envelope("connection.update", {"instance": "inst", "state": "open"})))
    assert (open_.route, open_.connected, open_.phone) == (Route.CONNECTION, True, None)
    owned = envelope("connection.update", {"state": "open", "wuid": f"{PHONE}@s.whatsapp.net"})
    assert evo_hooks.parse(raw(owned)).phone == PHONE
    refused = evo_hooks.parse(raw(envelope("connection.update", {"state": "refused", "statusReason": 428})))
    assert (refused.route, refused.failure_reason) == (Route.DISCONNECTION, "QR_REFUSED")
    gone = evo_hooks.parse(raw(envelope("status.instance", {"status": "closed", "disconnectionReasonCode": 401})))
    assert (gone.route, gone.failure_reason) == (Route.DISCONNECTION, "LOGGED_OUT")
    blip = evo_hooks.parse(raw(envelope("status.instance", {"status": "closed", "disconnectionReasonCode": 515})))
    assert (blip.route, blip.failure_reason) == (Route.DISCONNECTION, "")


def test_evolution_pending_and_deleted_do_not_move_messages() -> None:
    for status in ("PENDING", "DELETED"):
        event = evo_hooks.parse(raw(envelope("messages.update", {"keyId": "K", "status": status})))
        assert event.status is None
        assert event.route is Route.PRESENCE


# --- clients against the dialect simulator ------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[DialectSimulator]:
    async with DialectSimulator() as simulator:
        yield simulator


def message(to: str = "5515981121710") -> OutboundMessage:
    return OutboundMessage(MessageKind.TEXT, to, Text("Olá"))


async def test_zapi_send_is_queued_with_both_ids_and_client_token_is_sent(sim: DialectSimulator) -> None:
    sim.add_instance(ZAPI, "ZI", TOKEN, client_token=CLIENT_TOKEN, phone=PHONE)
    provider = ZapiProvider(sim.root_url)
    try:
        creds = Credentials("ZI", TOKEN, provider="ZAPI", client_token=CLIENT_TOKEN)
        outcome = await provider.send(creds, message(), timeout=2)
        mid = sim.instances["ZI"].sends[0]["messageId"]
        assert (outcome.provider_message_id, outcome.queue_id, outcome.failure) == (mid, "Z" + mid, None)
        probe = await provider.probe(creds, timeout=2)
        assert (probe.connected, probe.phone) == (True, PHONE)
        # Without the account's Client-Token, Z-API answers "null not allowed": a credentials problem.
        refused = await provider.probe(Credentials("ZI", TOKEN, provider="ZAPI"), timeout=2)
        assert refused.failure is Reason.TOKEN_INVALID
    finally:
        await provider.aclose()


def test_zapi_phone_exists_accepts_array_and_object() -> None:
    assert zapi_client.send_answer(Answer(200, {"zaapId": "Z", "messageId": "M", "id": "M"})).queue_id == "Z"
    assert zapi_client.send_answer(Answer(200, {"zaapId": "Z"})).failure is Reason.PROVIDER_NO_MESSAGE_ID
    assert zapi_client.send_answer(Answer(400, {"error": "null not allowed"})).failure is Reason.TOKEN_INVALID


async def test_zapi_number_check_both_shapes(sim: DialectSimulator) -> None:
    sim.add_instance(ZAPI, "ZI", TOKEN)
    sim.not_on_whatsapp.add("5511900000000")
    provider = ZapiProvider(sim.root_url)
    try:
        creds = Credentials("ZI", TOKEN)
        assert await provider.number_exists(creds, "5511900000000", timeout=2) is False
        assert await provider.number_exists(creds, "5511911111111", timeout=2) is True
    finally:
        await provider.aclose()


async def test_evolution_pending_answer_is_queued_and_quirks(sim: DialectSimulator) -> None:
    sim.add_instance(EVOLUTION, "evo", TOKEN, phone=PHONE)
    provider = EvolutionProvider()
    creds = Credentials("evo", TOKEN, provider="EVOLUTION", base_url=sim.root_url)
    try:
        outcome = await provider.send(creds, message(), timeout=2)
        assert outcome.provider_message_id == outcome.queue_id == sim.instances["evo"].sends[0]["messageId"]
        probe = await provider.probe(creds, timeout=2)
        assert (probe.connected, probe.phone) == (True, PHONE)
        sim.not_on_whatsapp.add("5511900000000")
        missing = await provider.send(creds, message("5511900000000"), timeout=2)
        assert missing.failure is Reason.NOT_ON_WHATSAPP
        sim.set_behaviour("evo", "disconnected")
        restart = await provider.restart(creds, timeout=2)  # HTTP 200 {"error": true}
        assert (restart.ok, restart.failure) == (False, Reason.PROVIDER_ERROR)
        assert "[object Object]" not in restart.detail
        logged_out = await provider.probe(creds, timeout=2)
        assert logged_out.failure is Reason.LOGGED_OUT
        wrong = await provider.probe(Credentials("evo", "nope", base_url=sim.root_url), timeout=2)
        assert wrong.failure is Reason.TOKEN_INVALID
    finally:
        await provider.aclose()


async def test_credentials_never_appear_in_details_when_the_provider_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    zapi = ZapiProvider(base)
    evolution = EvolutionProvider()
    try:
        z = Credentials("ZI", TOKEN, client_token=CLIENT_TOKEN)
        e = Credentials("evo", TOKEN, base_url=base)
        texts = [
            str(await zapi.send(z, message(), timeout=0.5)),
            str(await zapi.probe(z, timeout=0.5)),
            str(await zapi.restart(z, timeout=0.5)),
            str(await evolution.send(e, message(), timeout=0.5)),
            str(await evolution.probe(e, timeout=0.5)),
            str(z),
            str(e),
        ]
        for text in texts:
            assert TOKEN not in text, text
            assert CLIENT_TOKEN not in text, text
        assert (await zapi.send(z, message(), timeout=0.5)).failure is Reason.PROVIDER_UNAVAILABLE
    finally:
        await zapi.aclose()
        await evolution.aclose()


# --- inbound messages in one shape (the event feed) -----------------------------------------------


def test_inbound_bodies_of_every_provider_normalize_alike() -> None:
    from adapters.inbound import normalize_inbound

    zapi = {
        "type": "ReceivedCallback",
        "instanceId": "3C0E",
        "messageId": "Z1",
        "phone": "5544999999999",
        "fromMe": False,
        "momment": 1632228638000,
        "senderName": "Ana",
        "connectedPhone": PHONE,
        "isGroup": False,
        "text": {"message": "oi"},
    }
    z = normalize_inbound(raw(zapi))
    assert z is not None
    assert (z.provider_message_id, z.chat_id, z.sender_phone, z.push_name, z.kind, z.text, z.connected_phone) == (
        "Z1",
        "5544999999999",
        "5544999999999",
        "Ana",
        "text",
        "oi",
        PHONE,
    )
    image = normalize_inbound(
        zapi | {"text": None, "image": {"imageUrl": "https://x/i.jpg", "caption": "c", "mimeType": "image/jpeg"}}
    )
    assert image is not None
    assert (image.kind, image.text) == ("image", "c")
    assert image.media is not None
    assert image.media.url == "https://x/i.jpg"
    evolution = envelope(
        "messages.upsert",
        {
            "key": {"remoteJid": "5544999999999@s.whatsapp.net", "fromMe": False, "id": "E1"},
            "pushName": "Bia",
            "message": {"conversation": "olá"},
            "messageType": "conversation",
            "messageTimestamp": 1782601516,
        },
    )
    e = normalize_inbound(raw(evolution))
    assert e is not None
    assert (e.provider_message_id, e.chat_id, e.push_name, e.kind, e.text, e.from_me) == (
        "E1",
        "5544999999999@s.whatsapp.net",
        "Bia",
        "text",
        "olá",
        False,
    )
    wapi = {
        "event": "webhookReceived",
        "instanceId": "W",
        "messageId": "W1",
        "chat": {"id": "5544@s.whatsapp.net"},
        "msgContent": {"conversation": "x"},
    }
    w = normalize_inbound(raw(wapi))
    assert w is not None
    assert (w.kind, w.text) == ("text", "x")


async def test_evolution_fetch_instances_v1_rows_are_read_too(sim: DialectSimulator) -> None:
    sim.fetch_style = "v1"  # [{"instance": {"instanceName", "owner", "status"}}]
    sim.add_instance(EVOLUTION, "evo", TOKEN, phone=PHONE)
    sim.add_instance(EVOLUTION, "evo-new", TOKEN, behaviour="session_incomplete")
    provider = EvolutionProvider()
    try:
        found = await provider.probe(Credentials("evo", TOKEN, base_url=sim.root_url), timeout=2)
        assert (found.connected, found.phone) == (True, PHONE)
        incomplete = await provider.probe(Credentials("evo-new", TOKEN, base_url=sim.root_url), timeout=2)
        assert (incomplete.connected, incomplete.phone) == (True, None)
    finally:
        await provider.aclose()


def test_each_providers_parser_normalizes_the_inbound_message_once() -> None:
    """The parser hands the normalized message to the store (the change's `message`); the feed's
    edge maps that dict and no longer reads the provider's body."""
    from adapters.wapi.webhooks import parse_webhook
    from services.rpc.event_mapping import _inbound
    from statemachine.changes import ChangeKind, ChangeRecord

    zapi = {"type": "ReceivedCallback", "instanceId": "Z", "messageId": "Z1", "phone": "5544999999999"}
    evolution = envelope(
        "messages.upsert",
        {
            "key": {"remoteJid": "5544999999999@s.whatsapp.net", "fromMe": False, "id": "E1"},
            "message": {"conversation": "b"},
        },
    )
    wapi = {"event": "webhookReceived", "instanceId": "W", "messageId": "W1", "chat": {"id": "5544@s.whatsapp.net"}}
    events = [
        zapi_hooks.parse(raw(zapi | {"text": {"message": "a"}})),
        evo_hooks.parse(raw(evolution)),
        parse_webhook(raw(wapi | {"msgContent": {"conversation": "c"}})),
    ]
    for event, (mid, text) in zip(events, [("Z1", "a"), ("E1", "b"), ("W1", "c")], strict=True):
        assert event.inbound is not None
        assert (event.inbound["provider_message_id"], event.inbound["kind"], event.inbound["text"]) == (
            mid,
            "text",
            text,
        )
        # Only the stored `message` is read: the body is kept as raw, never re-parsed at the edge.
        payload = {
            "instance_id": "i",
            "provider_message_id": mid,
            "body": {"unrelated": True},
            "message": event.inbound,
        }
        record = ChangeRecord(
            1, 1, "e", ChangeKind.MESSAGE_RECEIVED, "i", None, datetime.now(UTC), json.loads(json.dumps(payload))
        )
        mapped = _inbound(record)
        assert (mapped.provider_message_id, mapped.kind, mapped.text) == (mid, "text", text)


def test_inbound_rows_stored_before_the_normalized_form_still_render() -> None:
    from adapters.persistence.changelog import _payload
    from services.rpc.event_mapping import _inbound
    from statemachine.changes import ChangeKind, ChangeRecord

    body = {
        "type": "ReceivedCallback",
        "instanceId": "Z",
        "messageId": "Z1",
        "phone": "5544999999999",
        "image": {"imageUrl": "https://x/i.jpg", "caption": "c", "mimeType": "image/jpeg"},
    }
    legacy = json.dumps({"instance_id": "Z", "provider_message_id": "Z1", "body": body})
    payload = _payload(ChangeKind.MESSAGE_RECEIVED.value, legacy)
    record = ChangeRecord(1, 1, "e", ChangeKind.MESSAGE_RECEIVED, "Z", None, datetime.now(UTC), payload)
    mapped = _inbound(record)
    assert (mapped.kind, mapped.text, mapped.media.url, mapped.sender_phone) == (
        "image",
        "c",
        "https://x/i.jpg",
        "5544999999999",
    )
    assert mapped.raw["messageId"] == "Z1"
    # Other kinds are read as stored.
    assert "message" not in _payload(ChangeKind.MESSAGE_STATE_CHANGED.value, legacy)
