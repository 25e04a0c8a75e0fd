"""W-API webhook bodies → ProviderEvent, using the shapes documented in docs/wapi-contract.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.wapi.webhooks import parse_webhook
from statemachine.domain import MessageState
from statemachine.events import EventReason, ProviderEvent, Route

INSTANCE = "CYAJQL-HIIWWG-S6RU9I"
PHONE = "559992249708"
LID = "176488829694091@lid"
MID = "3EB00CD0857BA22EAEDCD9"
CHAT = "559999999999"
MOMENT = 1749132337
MOMENT_DT = datetime(2025, 6, 5, 14, 5, 37, tzinfo=UTC)
S = MessageState


def parse(body: Any) -> ProviderEvent:
    return parse_webhook(json.dumps(body).encode())


def is_digest(key: str) -> bool:
    return key.startswith("sha256:") and len(key) == len("sha256:") + 64


# --- connection ---------------------------------------------------------------------------------


def test_webhook_connected_with_phone() -> None:
    e = parse(
        {
            "event": "webhookConnected",
            "instanceId": INSTANCE,
            "connected": True,
            "connectedPhone": PHONE,
            "connectedLid": LID,
            "moment": MOMENT,
        }
    )
    assert e.route is Route.CONNECTION
    assert e.reason == EventReason.RECORDED
    assert e.instance_id == INSTANCE
    assert e.connected is True
    assert e.phone == PHONE
    assert e.lid == LID
    assert e.moment == MOMENT_DT
    assert is_digest(e.dedupe_key)


def test_webhook_connected_without_phone_is_connected_without_phone() -> None:
    """replaced-system item 5: the parser must not invent a phone; the machine turns this into SESSION_INCOMPLETE."""
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, "connected": True, "moment": MOMENT})
    assert e.route is Route.CONNECTION
    assert e.connected is True
    assert e.phone is None


@pytest.mark.parametrize("phone", ["", None, "abc", "123", "not-a-phone@s.whatsapp.net", 0, True, [], {}])
def test_webhook_connected_with_junk_phone_has_no_phone(phone: Any) -> None:
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, "connected": True, "connectedPhone": phone})
    assert (e.route, e.connected, e.phone) == (Route.CONNECTION, True, None)


def test_webhook_connected_without_connected_key_defaults_to_connected() -> None:
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, "connectedPhone": PHONE})
    assert (e.connected, e.phone) == (True, PHONE)


@pytest.mark.parametrize(
    ("body", "connected", "phone"),
    [
        ({"event": "connection", "instanceId": INSTANCE, "connected": True, "phone": PHONE}, True, PHONE),
        ({"event": "connection", "instanceId": INSTANCE, "connected": False}, False, None),
        ({"event": "connection", "instanceId": INSTANCE, "data": {"connected": True, "phone": PHONE}}, True, PHONE),
        ({"event": "connection", "instanceId": INSTANCE, "data": {"connected": True}}, True, None),
        ({"event": "connection", "instanceId": INSTANCE, "data": {"connected": False}}, False, None),
        ({"event": "connection", "data": {"instanceId": INSTANCE, "connected": True, "phone": PHONE}}, True, PHONE),
        ({"event": "webhookConnected", "instanceId": INSTANCE, "phoneNumber": "+" + PHONE}, True, PHONE),
        ({"event": "webhookConnected", "instanceId": INSTANCE, "connectedPhone": int(PHONE)}, True, PHONE),
        ({"event": "connected", "instanceId": INSTANCE, "connectedPhone": PHONE}, True, PHONE),
        ({"event": "CONNECTION", "instanceId": INSTANCE, "connectedPhone": PHONE}, True, PHONE),
    ],
    ids=[
        "connection-phone",
        "connection-false",
        "data-connected-phone",
        "data-connected-no-phone",
        "data-connected-false",
        "instance-id-under-data",
        "phoneNumber-with-plus",
        "phone-as-number",
        "event-connected",
        "event-upper-case",
    ],
)
def test_connection_variants(body: dict[str, Any], connected: bool, phone: str | None) -> None:
    e = parse(body)
    assert e.route is Route.CONNECTION
    assert e.instance_id == INSTANCE
    assert (e.connected, e.phone) == (connected, phone)


@pytest.mark.parametrize(
    ("me", "phone"),
    [
        ({"id": "5511999990000:12@s.whatsapp.net"}, "5511999990000"),
        ({"id": "5511999990000@s.whatsapp.net"}, "5511999990000"),
        ({"id": "5511999990000"}, "5511999990000"),
        ({"id": "abc@s.whatsapp.net"}, None),
        ({"id": ""}, None),
        ({}, None),
        ("5511999990000@s.whatsapp.net", None),  # `me` must be an object
    ],
)
def test_phone_from_me_id(me: Any, phone: str | None) -> None:
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, "connected": True, "me": me})
    assert e.phone == phone


def test_phone_from_wid_user() -> None:
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, "wid": {"user": "5511999990000"}})
    assert e.phone == "5511999990000"


@pytest.mark.parametrize("event", ["webhookDisconnected", "disconnection", "disconnected", "WEBHOOKDISCONNECTED"])
def test_disconnection(event: str) -> None:
    e = parse({"event": event, "instanceId": INSTANCE, "connected": False, "moment": MOMENT})
    assert e.route is Route.DISCONNECTION
    assert e.reason == EventReason.RECORDED
    assert e.connected is False
    assert e.instance_id == INSTANCE
    assert e.moment == MOMENT_DT


def test_disconnection_is_disconnected_whatever_the_body_says() -> None:
    e = parse({"event": "webhookDisconnected", "instanceId": INSTANCE, "connected": True})
    assert e.connected is False


# --- message status -----------------------------------------------------------------------------

STATUS_EVENTS = ["message-status", "message_ack", "webhookStatus"]
WORDS = [("sent", S.SENT), ("delivered", S.DELIVERED), ("read", S.READ), ("played", S.PLAYED), ("failed", S.FAILED)]
ACKS = [(0, S.FAILED), (2, S.SENT), (3, S.DELIVERED), (4, S.READ), (5, S.PLAYED)]


@pytest.mark.parametrize(("word", "state"), WORDS)
@pytest.mark.parametrize("event", STATUS_EVENTS)
def test_message_status_words(event: str, word: str, state: MessageState) -> None:
    e = parse(
        {
            "event": event,
            "instanceId": INSTANCE,
            "messageId": MID,
            "status": word,
            "chat": {"id": CHAT},
            "moment": MOMENT,
        }
    )
    assert e.route is Route.MESSAGE_STATUS
    assert e.reason == EventReason.RECORDED
    assert e.instance_id == INSTANCE
    assert e.provider_message_id == MID
    assert e.status is state
    assert e.raw_status == word
    assert e.chat_id == CHAT
    assert e.moment == MOMENT_DT
    assert e.dedupe_key == f"status:{INSTANCE}:{MID}:{state.value}"


@pytest.mark.parametrize(("ack", "state"), ACKS)
@pytest.mark.parametrize("event", STATUS_EVENTS)
def test_message_status_ack_numbers(event: str, ack: int, state: MessageState) -> None:
    e = parse({"event": event, "instanceId": INSTANCE, "messageId": MID, "ack": ack})
    assert (e.route, e.reason, e.status, e.raw_status) == (Route.MESSAGE_STATUS, EventReason.RECORDED, state, str(ack))


@pytest.mark.parametrize("event", STATUS_EVENTS)
def test_message_status_nested_under_data(event: str) -> None:
    e = parse({"event": event, "data": {"instanceId": INSTANCE, "messageId": MID, "status": "READ", "moment": MOMENT}})
    assert (e.route, e.instance_id, e.provider_message_id, e.status) == (
        Route.MESSAGE_STATUS,
        INSTANCE,
        MID,
        S.READ,
    )
    assert e.raw_status == "read"
    assert e.moment == MOMENT_DT


def test_message_status_ack_nested_under_data() -> None:
    e = parse({"event": "message_ack", "instanceId": INSTANCE, "data": {"id": MID, "ack": 3}})
    assert (e.provider_message_id, e.status) == (MID, S.DELIVERED)


def test_message_status_without_message_id() -> None:
    e = parse({"event": "message-status", "instanceId": INSTANCE, "status": "read"})
    assert e.route is Route.MESSAGE_STATUS
    assert e.reason == EventReason.MISSING_MESSAGE_ID
    assert e.status is None
    assert is_digest(e.dedupe_key)


@pytest.mark.parametrize("status", ["bogus", 1, 7, -1, True, 3.0, [], {}])
def test_message_status_unknown_status(status: Any) -> None:
    e = parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": status})
    assert e.route is Route.MESSAGE_STATUS
    assert e.reason == EventReason.UNKNOWN_STATUS
    assert e.status is None
    assert e.provider_message_id == MID
    assert is_digest(e.dedupe_key)


def test_unknown_status_keeps_the_raw_word() -> None:
    e = parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": "Pending"})
    assert e.raw_status == "pending"


# --- delivery / received / presence -------------------------------------------------------------


def delivery_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": "webhookDelivery",
        "instanceId": INSTANCE,
        "connectedPhone": PHONE,
        "connectedLid": LID,
        "isGroup": False,
        "messageId": MID,
        "fromMe": True,
        "fromApi": True,
        "chat": {"id": CHAT, "profilePicture": "https://example.com/p.jpg"},
        "moment": MOMENT,
        "msgContent": {"extendedTextMessage": {"text": "teste"}},
    }
    body.update(changes)
    return body


def test_webhook_delivery_from_api() -> None:
    e = parse(delivery_body())
    assert e.route is Route.DELIVERY
    assert e.reason == EventReason.RECORDED
    assert (e.instance_id, e.provider_message_id, e.chat_id, e.phone) == (INSTANCE, MID, CHAT, PHONE)
    assert e.from_api is True
    assert e.moment == MOMENT_DT
    assert e.status is None  # a delivery webhook is not a status report
    assert is_digest(e.dedupe_key)


@pytest.mark.parametrize(
    "changes",
    [{"fromApi": False}, {"fromApi": None}, {"fromApi": "true"}, {"fromMe": False}, {"fromMe": 1, "fromApi": 1}],
    ids=["fromApi-false", "fromApi-null", "fromApi-string", "not-fromMe", "numbers"],
)
def test_webhook_delivery_not_from_api(changes: dict[str, Any]) -> None:
    e = parse(delivery_body(**changes))
    assert (e.route, e.from_api) == (Route.DELIVERY, False)


def test_webhook_delivery_sent_from_the_phone_has_no_fromapi() -> None:
    body = delivery_body()
    del body["fromApi"]
    assert parse(body).from_api is False


def test_webhook_received() -> None:
    e = parse(
        {
            "event": "webhookReceived",
            "instanceId": INSTANCE,
            "connectedPhone": PHONE,
            "isGroup": False,
            "messageId": MID,
            "fromMe": False,
            "chat": {"id": CHAT, "profilePicture": "https://example.com/p.jpg"},
            "sender": {"id": CHAT, "profilePicture": "", "pushName": "name", "verifiedBizName": ""},
            "moment": MOMENT,
            "msgContent": {"extendedTextMessage": {"text": "teste"}},
        }
    )
    assert e.route is Route.RECEIVED
    assert e.reason == EventReason.RECORDED
    assert (e.instance_id, e.provider_message_id, e.chat_id, e.phone) == (INSTANCE, MID, CHAT, PHONE)
    assert e.from_api is False
    assert e.moment == MOMENT_DT


@pytest.mark.parametrize("event", ["webhookChatPresence", "chat-presence", "presence", "webhookPresence"])
@pytest.mark.parametrize("word", ["composing", "recording", "paused", "available"])
def test_presence(event: str, word: str) -> None:
    e = parse({"event": event, "instanceId": INSTANCE, "chat": {"id": CHAT}, "status": word, "moment": MOMENT})
    assert e.route is Route.PRESENCE
    assert e.reason == EventReason.RECORDED
    assert (e.chat_id, e.raw_status, e.status) == (CHAT, word, None)


# --- the event-less body (docs/wapi-contract.md, replaced-system item 6) ---------------------------


def eventless(status: Any = "read", chat: Any = None, **changes: Any) -> dict[str, Any]:
    body = {
        "instanceId": INSTANCE,
        "connectedPhone": PHONE,
        "connectedLid": LID,
        "chat": {"id": CHAT} if chat is None else chat,
        "status": status,
        "moment": MOMENT,
    }
    body.update(changes)
    return body


def test_eventless_body_has_exactly_the_documented_keys() -> None:
    assert set(eventless()) == {"instanceId", "connectedPhone", "connectedLid", "chat", "status", "moment"}


@pytest.mark.parametrize("status", ["composing", "available", "read", "delivered", "bogus", 3, None])
def test_eventless_body_without_message_id_is_chat_status_telemetry(status: Any) -> None:
    e = parse(eventless(status))
    assert e.route is Route.CHAT_STATUS
    assert e.reason == EventReason.CHAT_TELEMETRY
    assert e.status is None  # nothing to apply without a message id
    assert e.provider_message_id is None
    assert (e.instance_id, e.phone, e.lid, e.chat_id, e.moment) == (INSTANCE, PHONE, LID, CHAT, MOMENT_DT)
    assert is_digest(e.dedupe_key)


@pytest.mark.parametrize(("word", "state"), WORDS)
def test_eventless_body_with_message_id_is_a_status(word: str, state: MessageState) -> None:
    e = parse(eventless(word, chat={"id": CHAT, "messageId": MID}))
    assert e.route is Route.CHAT_STATUS
    assert e.reason == EventReason.RECORDED
    assert (e.provider_message_id, e.status, e.raw_status) == (MID, state, word)
    assert e.dedupe_key == f"status:{INSTANCE}:{MID}:{state.value}"


def test_eventless_status_and_message_status_event_dedupe_together() -> None:
    a = parse(eventless("delivered", chat={"id": CHAT, "messageId": MID}))
    b = parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": "delivered"})
    assert a.dedupe_key == b.dedupe_key


def test_eventless_with_extra_message_id_key_is_still_chat_status() -> None:
    e = parse(eventless("read", messageId=MID))
    assert (e.route, e.provider_message_id, e.status) == (Route.CHAT_STATUS, MID, S.READ)


def test_eventless_with_chat_as_string() -> None:
    e = parse(eventless("composing", chat=CHAT))
    assert (e.route, e.chat_id) == (Route.CHAT_STATUS, CHAT)


def test_eventless_minimal_shape_is_chat_status() -> None:
    e = parse({"instanceId": INSTANCE, "chat": {"id": CHAT}, "status": "paused"})
    assert e.route is Route.CHAT_STATUS


@pytest.mark.parametrize("instance_id", ["", None, "bad id", "x" * 65, 123.5])
def test_eventless_with_bad_instance_id(instance_id: Any) -> None:
    e = parse(eventless(instanceId=instance_id))
    assert e.route is Route.CHAT_STATUS
    assert e.reason == EventReason.MISSING_INSTANCE_ID
    assert e.instance_id is None


# --- unroutable ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b"{'single': 'quotes'}", b"\xff\xfe\x00{", b'{"a": 1} trailing', b"[" * 100_000],
    ids=["empty", "truncated", "text", "single-quotes", "bad-utf", "trailing", "deep-nesting"],
)
def test_malformed_json(raw: bytes) -> None:
    e = parse_webhook(raw)
    assert (e.route, e.reason) == (Route.UNROUTABLE, EventReason.MALFORMED_JSON)
    assert is_digest(e.dedupe_key)


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"webhookConnected"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object(raw: bytes) -> None:
    e = parse_webhook(raw)
    assert (e.route, e.reason) == (Route.UNROUTABLE, EventReason.NOT_AN_OBJECT)


def test_unknown_event_names_the_event() -> None:
    e = parse({"event": "webhookSomethingNew", "instanceId": INSTANCE})
    assert e.route is Route.UNROUTABLE
    assert e.reason == "UNKNOWN_EVENT:webhookSomethingNew"
    assert e.instance_id == INSTANCE


def test_unknown_event_reason_is_bounded() -> None:
    e = parse({"event": "x" * 10_000, "instanceId": INSTANCE})
    assert e.route is Route.UNROUTABLE
    assert e.reason.startswith(EventReason.UNKNOWN_EVENT + ":")
    assert len(e.reason) <= len("UNKNOWN_EVENT:") + 64


@pytest.mark.parametrize(
    "body",
    [{}, {"instanceId": INSTANCE}, {"instanceId": INSTANCE, "status": "read"}, {"chat": {"id": CHAT}, "status": "x"}],
)
def test_no_event_key_and_not_a_chat_status_shape(body: dict[str, Any]) -> None:
    e = parse(body)
    assert (e.route, e.reason) == (Route.UNROUTABLE, EventReason.NO_EVENT_KEY)


def test_type_key_is_an_alias_of_event() -> None:
    e = parse({"type": "webhookConnected", "instanceId": INSTANCE, "connectedPhone": PHONE})
    assert (e.route, e.phone) == (Route.CONNECTION, PHONE)


@pytest.mark.parametrize("event", ["webhookConnected", "webhookDisconnected", "message-status", "webhookReceived"])
@pytest.mark.parametrize("instance_id", [None, "", "bad id", "-starts-with-dash", "x" * 65, ["list"]])
def test_missing_or_invalid_instance_id(event: str, instance_id: Any) -> None:
    body: dict[str, Any] = {"event": event, "messageId": MID, "status": "read", "connectedPhone": PHONE}
    if instance_id is not None:
        body["instanceId"] = instance_id
    e = parse(body)
    assert e.reason == EventReason.MISSING_INSTANCE_ID
    assert e.instance_id is None
    assert e.route is not Route.UNROUTABLE  # the route is still known, the reason says what is missing


def test_instance_id_is_stripped() -> None:
    assert parse({"event": "webhookConnected", "instanceId": f"  {INSTANCE} "}).instance_id == INSTANCE


# --- dedupe -------------------------------------------------------------------------------------


def test_same_status_same_message_twice_shares_a_key_even_if_moment_differs() -> None:
    a = parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": "read", "moment": 1})
    b = parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": "read", "moment": 2})
    assert a.dedupe_key == b.dedupe_key


def test_status_word_and_ack_number_for_the_same_state_share_a_key() -> None:
    a = parse({"event": "message-status", "instanceId": INSTANCE, "messageId": MID, "status": "delivered"})
    b = parse({"event": "message_ack", "instanceId": INSTANCE, "messageId": MID, "ack": 3})
    assert a.dedupe_key == b.dedupe_key


def test_different_statuses_differ() -> None:
    keys = {
        parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": word}).dedupe_key
        for word, _ in WORDS
    }
    assert len(keys) == len(WORDS)


def test_different_messages_or_instances_differ() -> None:
    base = {"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": "read"}
    keys = {
        parse(base).dedupe_key,
        parse({**base, "messageId": MID + "X"}).dedupe_key,
        parse({**base, "instanceId": "OTHER-INSTANCE"}).dedupe_key,
    }
    assert len(keys) == 3


def test_identical_connection_bodies_share_a_key() -> None:
    body = {"event": "webhookConnected", "instanceId": INSTANCE, "connectedPhone": PHONE, "moment": MOMENT}
    assert parse(body).dedupe_key == parse(dict(body)).dedupe_key


def test_different_connection_bodies_differ() -> None:
    body = {"event": "webhookConnected", "instanceId": INSTANCE, "connectedPhone": PHONE, "moment": MOMENT}
    assert parse(body).dedupe_key != parse({**body, "moment": MOMENT + 60}).dedupe_key


# --- moment -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (MOMENT, MOMENT_DT),
        (MOMENT * 1000, MOMENT_DT),
        (MOMENT * 1000 + 500, MOMENT_DT.replace(microsecond=500_000)),
        (MOMENT + 0.25, MOMENT_DT.replace(microsecond=250_000)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        ("1749132337", None),
        (True, None),
        (None, None),
        (10**20, None),
        ([MOMENT], None),
    ],
    ids=["seconds", "millis", "millis-fraction", "float-seconds", "epoch", "string", "bool", "null", "huge", "list"],
)
def test_moment(moment: Any, expected: datetime | None) -> None:
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, "moment": moment})
    assert e.moment == expected
    if expected is not None:
        assert e.moment is not None
        assert e.moment.tzinfo is not None


def test_timestamp_is_an_alias_of_moment() -> None:
    assert parse({"event": "webhookConnected", "instanceId": INSTANCE, "timestamp": MOMENT}).moment == MOMENT_DT


@pytest.mark.parametrize("raw_moment", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_moment(raw_moment: bytes) -> None:
    e = parse_webhook(b'{"event":"webhookConnected","instanceId":"%s","moment":%s}' % (INSTANCE.encode(), raw_moment))
    assert (e.route, e.moment) == (Route.CONNECTION, None)


@pytest.mark.parametrize("field", ["moment", "timestamp"])
def test_huge_integer_moment_does_not_raise(field: str) -> None:
    e = parse({"event": "webhookConnected", "instanceId": INSTANCE, field: 10**400})
    assert (e.route, e.moment) == (Route.CONNECTION, None)


# --- dedupe key bound ---------------------------------------------------------------------------

MAX_KEY = 200  # events.dedupe_key is String(200) in adapters/persistence/schema.py


@pytest.mark.parametrize(
    "body",
    [
        {"event": "webhookStatus", "instanceId": "I" * 64, "messageId": "m" * 128, "status": "delivered"},
        {"event": "webhookStatus", "instanceId": INSTANCE, "messageId": "m" * 127, "status": "read"},
        {"event": "webhookStatus", "instanceId": INSTANCE, "messageId": 10**120, "status": "read"},
        {
            "instanceId": INSTANCE,
            "connectedPhone": PHONE,
            "connectedLid": LID,
            "chat": {"id": CHAT, "messageId": "m" * 128},
            "status": "read",
            "moment": MOMENT,
        },
    ],
    ids=["status-128", "status-127", "status-int-id", "eventless-128"],
)
def test_dedupe_key_fits_the_column_for_long_message_ids(body: dict[str, Any]) -> None:
    e = parse(body)
    assert e.status is not None
    assert 0 < len(e.dedupe_key) <= MAX_KEY


def test_a_message_id_longer_than_its_column_is_not_a_message_id() -> None:
    e = parse({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": "m" * 129, "status": "read"})
    assert (e.route, e.reason, e.provider_message_id) == (Route.MESSAGE_STATUS, "MISSING_MESSAGE_ID", None)
    assert 0 < len(e.dedupe_key) <= MAX_KEY


# --- properties ---------------------------------------------------------------------------------

KNOWN_KEYS = [
    "event",
    "type",
    "instanceId",
    "instance_id",
    "connected",
    "connectedPhone",
    "connectedLid",
    "phone",
    "phoneNumber",
    "lid",
    "me",
    "wid",
    "chat",
    "chatId",
    "status",
    "ack",
    "moment",
    "timestamp",
    "messageId",
    "id",
    "msgId",
    "fromMe",
    "fromApi",
    "data",
]
# Message ids end up inside the dedupe key; long ones are the bug pinned by
# test_dedupe_key_fits_the_column_for_long_message_ids, so they stay short here.
ID_KEYS = {"messageId", "id", "msgId"}
EVENT_NAMES = [
    "webhookConnected",
    "connection",
    "webhookDisconnected",
    "disconnection",
    "message-status",
    "message_ack",
    "webhookStatus",
    "webhookDelivery",
    "webhookReceived",
    "webhookChatPresence",
    "presence",
    "somethingElse",
]


def huge_text() -> st.SearchStrategy[str]:
    return st.builds(lambda c, n: c * n, st.characters(), st.integers(1_000, 50_000))


# Integers stay below the size that trips the _moment OverflowError bug (pinned separately).
INTS = st.integers(min_value=-(10**300), max_value=10**300)
SHORT_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**15), 10**15), st.floats(), st.text(max_size=40))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["sent", "read", "composing", "5511999990000:1@s.whatsapp.net", INSTANCE, ""]),
    huge_text(),
)
# Dictionary keys for free-form values: every known key except the message-id ones (see above).
FREE_KEYS = st.sampled_from([k for k in KNOWN_KEYS if k not in ID_KEYS]) | st.text(max_size=8).filter(
    lambda k: k not in ID_KEYS
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(FREE_KEYS, children, max_size=3),
    max_leaves=5,
)
SHORT_JSON = st.recursive(
    SHORT_SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from([*KNOWN_KEYS, "messageId"]), children, max_size=3)
    ),
    max_leaves=4,
)


def value_for(key: str) -> st.SearchStrategy[Any]:
    if key in ID_KEYS:
        return SHORT_JSON
    if key == "chat":  # chat.messageId is a message id too
        return SHORT_JSON
    if key == "event":
        return st.sampled_from(EVENT_NAMES) | SCALARS
    if key == "instanceId":
        return st.sampled_from([INSTANCE, "LITE-4IW93E-MGVYDW", ""]) | SCALARS
    if key == "data":
        return st.fixed_dictionaries({}, optional={k: value_for(k) for k in KNOWN_KEYS if k not in {"data", *ID_KEYS}})
    return JSON


BODIES = st.fixed_dictionaries({}, optional={k: value_for(k) for k in KNOWN_KEYS})


def deeply_nested(depth: int, inner: str) -> bytes:
    return ('{"data":' * depth + inner + "}" * depth).encode()


def assert_contract(event: ProviderEvent) -> None:
    assert isinstance(event, ProviderEvent)
    assert isinstance(event.route, Route)
    assert isinstance(event.reason, str)
    assert event.reason
    assert isinstance(event.dedupe_key, str)
    assert 0 < len(event.dedupe_key) <= MAX_KEY
    if event.route is Route.UNROUTABLE:
        assert event.status is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\x00")
@example(b"[" * 50_000)
@example(deeply_nested(5_000, "{}"))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    assert_contract(parse_webhook(raw))


@settings(max_examples=100, deadline=None)
@given(BODIES)
@example({"event": "webhookConnected", "instanceId": INSTANCE, "moment": float("nan")})
@example({"event": "webhookStatus", "instanceId": INSTANCE, "messageId": MID, "status": "x" * 100_000})
@example({"event": ["webhookStatus"], "instanceId": {"id": INSTANCE}, "chat": [], "data": "data"})
@example({"instanceId": INSTANCE, "chat": None, "status": None, "connectedPhone": [], "connectedLid": {}})
def test_never_raises_on_arbitrary_json_objects(body: dict[str, Any]) -> None:
    event = parse(body)
    assert_contract(event)
    if event.status is not None:
        assert event.provider_message_id
        assert event.instance_id
        assert event.route in (Route.MESSAGE_STATUS, Route.CHAT_STATUS)


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_never_raises_on_arbitrary_json_values(value: Any) -> None:
    event = parse_webhook(json.dumps(value).encode())
    assert_contract(event)
    if not isinstance(value, dict):
        assert (event.route, event.reason) == (Route.UNROUTABLE, EventReason.NOT_AN_OBJECT)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 20_000), st.sampled_from(['{"event":"webhookStatus"}', "[]", '"x"', "1"]))
def test_never_raises_on_deep_nesting(depth: int, inner: str) -> None:
    assert_contract(parse_webhook(deeply_nested(depth, inner)))


@settings(max_examples=100, deadline=None)
@given(
    mid=st.from_regex(r"[A-Za-z0-9]{1,40}", fullmatch=True),
    word=st.sampled_from([w for w, _ in WORDS]),
    first=st.integers(0, 2_000_000_000_000),
    second=st.integers(0, 2_000_000_000_000),
)
def test_status_key_ignores_moment(mid: str, word: str, first: int, second: int) -> None:
    body = {"event": "webhookStatus", "instanceId": INSTANCE, "messageId": mid, "status": word}
    a = parse({**body, "moment": first})
    b = parse({**body, "moment": second})
    assert a.dedupe_key == b.dedupe_key
    assert a.dedupe_key.startswith(f"status:{INSTANCE}:{mid}:")


def test_the_same_body_reserialized_has_the_same_dedupe_key() -> None:
    """A body replayed from W-API's webhook log comes back re-serialized: still the same event."""
    posted = b'{"event": "webhookReceived", "instanceId": "A1B2C3", "messageId": "M1", "moment": 1749132337}'
    replayed = b'{"moment":1749132337,"messageId":"M1","instanceId":"A1B2C3","event":"webhookReceived"}'
    other = b'{"event": "webhookReceived", "instanceId": "A1B2C3", "messageId": "M2", "moment": 1749132337}'
    assert parse_webhook(posted).dedupe_key == parse_webhook(replayed).dedupe_key
    assert parse_webhook(posted).dedupe_key != parse_webhook(other).dedupe_key
