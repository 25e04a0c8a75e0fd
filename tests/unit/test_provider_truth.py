"""Each provider's session truth and vocabularies (statemachine/providers.py), through the one
instance machine: connected only with a phone, whatever the provider says."""

from __future__ import annotations

import pytest

from statemachine.domain import InstanceState, MessageState, ProbeOutcome, Reason
from statemachine.instance_machine import (
    InstanceTrigger,
    connection_event_trigger,
    decide_instance,
    inbound_event_trigger,
    probe_trigger,
)
from statemachine.providers import (
    EVOLUTION_STATUS,
    ZAPI_STATUS,
    evolution_owner,
    evolution_session,
    normalize_failure,
    zapi_session,
)

PHONE = "5511987654321"


def verdict(outcome: ProbeOutcome) -> tuple[InstanceState, str, str | None]:
    d = decide_instance(InstanceState.UNKNOWN, "REGISTERED", None, probe_trigger(outcome), new_phone=outcome.phone)
    return d.to_state, d.reason, d.phone


def test_zapi_connected_needs_the_device_phone() -> None:
    status = {"connected": True, "error": "", "smartphoneConnected": True}
    assert verdict(zapi_session(status, {"phone": PHONE})) == (InstanceState.CONNECTED, "PHONE_CONFIRMED", PHONE)
    for device in (None, {}, {"phone": ""}, {"phone": "123"}, {"phone": None}):
        state, reason, phone = verdict(zapi_session(status, device))
        assert (state, reason, phone) == (InstanceState.SESSION_INCOMPLETE, "SESSION_INCOMPLETE", None), device


def test_zapi_restore_session_is_its_own_reason() -> None:
    status = {"connected": False, "error": "You need to restore the session.", "smartphoneConnected": False}
    assert verdict(zapi_session(status, None))[:2] == (InstanceState.DISCONNECTED, "SESSION_NEEDS_RESTORE")


def test_zapi_phone_offline_degrades_and_keeps_the_phone() -> None:
    status = {"connected": True, "error": "", "smartphoneConnected": False}
    assert verdict(zapi_session(status, {"phone": PHONE})) == (InstanceState.DEGRADED, "PHONE_OFFLINE", PHONE)
    # ... but never on a phoneless session: that stays SESSION_INCOMPLETE.
    assert verdict(zapi_session(status, {"phone": ""}))[0] is InstanceState.SESSION_INCOMPLETE


def test_zapi_not_connected_and_client_token_refused() -> None:
    assert verdict(zapi_session({"connected": False, "error": "You are not connected."}, None))[0] is (
        InstanceState.DISCONNECTED
    )
    assert verdict(zapi_session({"error": "null not allowed"}, None))[1] == "TOKEN_INVALID"


@pytest.mark.parametrize(
    ("state", "owner", "expected"),
    [
        ("open", f"{PHONE}@s.whatsapp.net", (InstanceState.CONNECTED, "PHONE_CONFIRMED")),
        ("open", None, (InstanceState.SESSION_INCOMPLETE, "SESSION_INCOMPLETE")),
        ("connecting", None, (InstanceState.DISCONNECTED, "INSTANCE_DISCONNECTED")),
        ("close", f"{PHONE}@s.whatsapp.net", (InstanceState.DISCONNECTED, "INSTANCE_DISCONNECTED")),
        ("refused", None, (InstanceState.DISCONNECTED, "QR_REFUSED")),
        ("weird", None, (InstanceState.DEGRADED, "TIMEOUT_OR_GATEWAY")),
    ],
)
def test_evolution_open_needs_an_owner(state: str, owner: str | None, expected: tuple[InstanceState, str]) -> None:
    assert verdict(evolution_session(state, evolution_owner({"ownerJid": owner})))[:2] == expected


def test_evolution_owner_from_ownerjid_or_wuid() -> None:
    assert evolution_owner({"ownerJid": f"{PHONE}@s.whatsapp.net"}) == PHONE
    assert evolution_owner({"wuid": f"{PHONE}:12@s.whatsapp.net"}) == PHONE
    assert evolution_owner({"ownerJid": None, "wuid": ""}) is None
    assert evolution_owner(None) is None


def test_connection_events_never_connect_without_a_phone_on_any_provider() -> None:
    for reason in ("", "LOGGED_OUT", "QR_REFUSED"):
        trigger = connection_event_trigger(True, reason)
        d = decide_instance(InstanceState.CONNECTED, "PHONE_CONFIRMED", PHONE, trigger, new_phone=None)
        assert d.to_state is not InstanceState.CONNECTED, reason
    logged_out = connection_event_trigger(False, Reason.LOGGED_OUT.value)
    d = decide_instance(InstanceState.CONNECTED, "PHONE_CONFIRMED", PHONE, logged_out)
    assert (d.to_state, d.reason, d.phone) == (InstanceState.DISCONNECTED, "LOGGED_OUT", None)


def test_zapi_waiting_message_degrades_a_connected_instance_until_a_connection_with_a_phone() -> None:
    trigger = inbound_event_trigger(Reason.WAITING_FOR_MESSAGE.value)
    assert trigger is InstanceTrigger.REPORT_WAITING_MESSAGE
    assert inbound_event_trigger("") is None
    d = decide_instance(InstanceState.CONNECTED, "PHONE_CONFIRMED", PHONE, trigger)
    assert (d.to_state, d.reason, d.phone, d.changed) == (InstanceState.DEGRADED, "WAITING_FOR_MESSAGE", PHONE, True)
    # A stall keeps its reason; a recovery under way, or an instance already down, is not touched.
    for state, reason in (
        (InstanceState.DEGRADED, "DELIVERY_STALLED"),
        (InstanceState.DISCONNECTED, "RESTARTING"),
        (InstanceState.DISCONNECTED, "INSTANCE_DISCONNECTED"),
        (InstanceState.SESSION_INCOMPLETE, "SESSION_INCOMPLETE"),
    ):
        assert not decide_instance(state, reason, PHONE, trigger).changed, (state, reason)
    # A probe or a connection event with the phone ends it; without one it never connects.
    for back in (probe_trigger(ProbeOutcome(connected=True, phone=PHONE)), connection_event_trigger(True)):
        d = decide_instance(InstanceState.DEGRADED, "WAITING_FOR_MESSAGE", PHONE, back, new_phone=PHONE)
        assert (d.to_state, d.reason) == (InstanceState.CONNECTED, "PHONE_CONFIRMED")
        d = decide_instance(InstanceState.DEGRADED, "WAITING_FOR_MESSAGE", PHONE, back, new_phone=None)
        assert d.to_state is InstanceState.SESSION_INCOMPLETE


def test_status_vocabularies() -> None:
    assert ZAPI_STATUS == {
        "SENT": MessageState.SENT,
        "RECEIVED": MessageState.DELIVERED,
        "DELIVERED": MessageState.DELIVERED,
        "READ": MessageState.READ,
        "PLAYED": MessageState.PLAYED,
    }
    assert "READ_BY_ME" not in ZAPI_STATUS
    assert EVOLUTION_STATUS["SERVER_ACK"] is MessageState.SENT
    assert EVOLUTION_STATUS["DELIVERY_ACK"] is MessageState.DELIVERED
    assert EVOLUTION_STATUS["ERROR"] is MessageState.FAILED
    assert "PENDING" not in EVOLUTION_STATUS
    assert "DELETED" not in EVOLUTION_STATUS


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Phone number does not exist", Reason.NOT_ON_WHATSAPP),
        ("Message has not been sent because it got invalid phone number", Reason.NOT_ON_WHATSAPP),
        ("Timeout on send message", Reason.PROVIDER_UNCERTAIN),
        ("Error on send message", Reason.PROVIDER_UNCERTAIN),
        ("Message not send caused by invalid media url", Reason.INVALID_MEDIA),
        ("Got a 404 error while trying to send message", Reason.INVALID_MEDIA),
        ("Unsupported sticker format: text/html", Reason.INVALID_MEDIA),
        ("Whatsapp rejected sending this message", Reason.SEND_REJECTED),
        ("You can't message this group as you don't have permission", Reason.SEND_REJECTED),
        ("something new", Reason.PROVIDER_ERROR),
        ("", Reason.PROVIDER_ERROR),
    ],
)
def test_failure_texts_normalize(text: str, reason: Reason) -> None:
    assert normalize_failure(text) is reason


def test_shadow_ban_code_is_a_restriction() -> None:
    assert normalize_failure("anything", "SHADOW_BAN") is Reason.SEND_REJECTED
