"""adapters.wapi.contract: W-API bodies and answer parsers (pure), and the bodies on the wire."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.simulator import Simulator
from adapters.wapi.client import WapiProvider
from adapters.wapi.contract import (
    SEND_TABLE,
    ContentMismatchError,
    build_send_body,
    error_message,
    extension_from_file_name,
    extract_message_id,
    extract_queue_id,
    is_error_body,
    jid_to_phone,
    parse_status,
)
from statemachine.domain import (
    Contact,
    Content,
    Credentials,
    Document,
    Location,
    Media,
    MessageKind,
    OutboundMessage,
    Reaction,
    Reason,
    Text,
)

INSTANCE = "3B6XIW-ZTS923-GEAY6V"
TOKEN = "S3cr3t-T0ken-9f8e7d6c5b4a"  # as in conftest.py
TO = "5511988887777"
IMG = "https://cdn.example.com/a.png"

# (kind, content, endpoint, exact body)
SEND_CASES: list[tuple[MessageKind, Content, str, dict[str, Any]]] = [
    (MessageKind.TEXT, Text("Olá"), "/message/send-text", {"phone": TO, "message": "Olá"}),
    (
        MessageKind.IMAGE,
        Media(IMG, caption="legenda"),
        "/message/send-image",
        {"phone": TO, "image": IMG, "caption": "legenda"},
    ),
    (MessageKind.IMAGE, Media(IMG), "/message/send-image", {"phone": TO, "image": IMG}),
    (
        MessageKind.AUDIO,
        Media("https://cdn.example.com/a.ogg", caption="ignored"),
        "/message/send-audio",
        {"phone": TO, "audio": "https://cdn.example.com/a.ogg"},
    ),
    (
        MessageKind.VIDEO,
        Media("https://cdn.example.com/v.mp4", caption="vídeo"),
        "/message/send-video",
        {"phone": TO, "video": "https://cdn.example.com/v.mp4", "caption": "vídeo"},
    ),
    (
        MessageKind.DOCUMENT,
        Document("https://cdn.example.com/r.pdf", "Relatório.PDF", caption="segue"),
        "/message/send-document",
        {
            "phone": TO,
            "document": "https://cdn.example.com/r.pdf",
            "fileName": "Relatório.PDF",
            "extension": "pdf",
            "caption": "segue",
        },
    ),
    (
        MessageKind.DOCUMENT,
        Document("https://cdn.example.com/x", "planilha", extension=".XLSX"),
        "/message/send-document",
        {"phone": TO, "document": "https://cdn.example.com/x", "fileName": "planilha", "extension": "xlsx"},
    ),
    (
        MessageKind.DOCUMENT,
        Document("https://cdn.example.com/x", "sem-extensao"),
        "/message/send-document",
        {"phone": TO, "document": "https://cdn.example.com/x", "fileName": "sem-extensao"},
    ),
    (
        MessageKind.LOCATION,
        Location(-23.5505, -46.6333, name="Sé", address="Praça da Sé, São Paulo"),
        "/message/send-location",
        {
            "phone": TO,
            "name": "Sé",
            "address": "Praça da Sé, São Paulo",
            "latitude": "-23.5505",
            "longitude": "-46.6333",
        },
    ),
    (
        MessageKind.LOCATION,
        Location(0.00001, 10),
        "/message/send-location",
        {"phone": TO, "name": "", "address": "", "latitude": "0.00001", "longitude": "10.0"},
    ),
    (
        MessageKind.CONTACT,
        Contact("Maria", "5511977776666", business_description="Loja"),
        "/message/send-contact",
        {
            "phone": TO,
            "contactName": "Maria",
            "contactPhone": "5511977776666",
            "contactBusinessDescription": "Loja",
        },
    ),
    (
        MessageKind.CONTACT,
        Contact("Maria", "5511977776666"),
        "/message/send-contact",
        {"phone": TO, "contactName": "Maria", "contactPhone": "5511977776666"},
    ),
    (
        MessageKind.STICKER,
        Media("https://cdn.example.com/s.webp"),
        "/message/send-sticker",
        {"phone": TO, "sticker": "https://cdn.example.com/s.webp"},
    ),
    (
        MessageKind.REACTION,
        Reaction("👍", "3EB0AAAABBBBCCCCDDDDEEEEFFFF0000"),
        "/message/send-reaction",
        {"phone": TO, "reaction": "👍", "messageId": "3EB0AAAABBBBCCCCDDDDEEEEFFFF0000"},
    ),
]


def test_send_table_covers_every_kind() -> None:
    assert set(SEND_TABLE) == set(MessageKind)
    assert all(spec.endpoint.startswith("/message/send-") for spec in SEND_TABLE.values())


@pytest.mark.parametrize(
    ("kind", "content", "endpoint", "body"),
    SEND_CASES,
    ids=[f"{c[0].value}-{i}" for i, c in enumerate(SEND_CASES)],
)
def test_build_send_body_exact_fields(kind: MessageKind, content: Content, endpoint: str, body: dict[str, Any]) -> None:
    assert build_send_body(OutboundMessage(kind, TO, content)) == (endpoint, body)


@pytest.mark.parametrize(
    ("kind", "content", "endpoint", "body"),
    SEND_CASES,
    ids=[f"{c[0].value}-{i}" for i, c in enumerate(SEND_CASES)],
)
async def test_every_send_kind_over_http_hits_its_endpoint_with_exact_body(
    sim: Simulator,
    provider: WapiProvider,
    creds: Credentials,
    kind: MessageKind,
    content: Content,
    endpoint: str,
    body: dict[str, Any],
) -> None:
    sim.add_instance(INSTANCE, TOKEN)
    outcome = await provider.send(creds, OutboundMessage(kind, TO, content), timeout=2.0)

    assert outcome.accepted, outcome
    [received] = sim.sends(INSTANCE)
    assert received["endpoint"] == endpoint
    assert received["body"] == body
    assert received["message_id"] == outcome.provider_message_id
    [request] = sim.requests
    assert (request.method, request.path) == ("POST", endpoint)
    assert request.query == {"instanceId": INSTANCE}
    assert request.has_valid_auth is True  # Authorization: Bearer <token> of this instance


def test_reply_to_and_delay_are_added_when_set() -> None:
    message = OutboundMessage(MessageKind.TEXT, TO, Text("oi"), reply_to="3EB0REPLY", delay_seconds=3)
    assert build_send_body(message) == (
        "/message/send-text",
        {"phone": TO, "message": "oi", "messageId": "3EB0REPLY", "delayMessage": 3},
    )


def test_reaction_keeps_its_target_even_with_reply_to() -> None:
    message = OutboundMessage(MessageKind.REACTION, TO, Reaction("❤", "3EB0TARGET"), reply_to="3EB0OTHER")
    assert build_send_body(message)[1]["messageId"] == "3EB0TARGET"


@pytest.mark.parametrize(
    "message",
    [
        OutboundMessage(MessageKind.TEXT, TO, Media(IMG)),
        OutboundMessage(MessageKind.IMAGE, TO, Text("x")),
        OutboundMessage(MessageKind.DOCUMENT, TO, Media(IMG)),
        OutboundMessage(MessageKind.REACTION, TO, Reaction("👍", "")),
        OutboundMessage(MessageKind.LOCATION, TO, Location(91.0, 0.0)),
        OutboundMessage(MessageKind.LOCATION, TO, Location(float("nan"), 0.0)),
        OutboundMessage(MessageKind.LOCATION, TO, Location("north", 0.0)),  # type: ignore[arg-type]
        OutboundMessage(MessageKind.TEXT, " ", Text("x")),
    ],
)
def test_inconsistent_message_is_refused(message: OutboundMessage) -> None:
    with pytest.raises(ContentMismatchError):
        build_send_body(message)


@pytest.mark.parametrize(
    ("name", "ext"),
    [
        ("a.pdf", "pdf"),
        ("Relatório.final.DOCX", "docx"),
        ("noext", ""),
        (".hidden", ""),
        ("x.", ""),
        ("", ""),
    ],
)
def test_extension_from_file_name(name: str, ext: str) -> None:
    assert extension_from_file_name(name) == ext


# --- send answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messageId": "3EB0A"}, "3EB0A"),
        ({"id": "X1"}, "X1"),
        ({"data": {"messageId": "D1"}}, "D1"),
        ({"data": {"id": "D2"}}, "D2"),
        ({"insertedId": "Q1"}, None),  # a queue handle is not a message id
        ({"insertedId": 42}, None),
        ({"messageId": "M", "id": "I", "data": {"messageId": "D"}, "insertedId": "Q"}, "M"),
        ({"messageId": "", "id": "I"}, "I"),
        ({"id": None, "data": {"id": "D2"}, "insertedId": "Q"}, "D2"),
        ({"success": True}, None),
        ({"messageId": True}, None),
        ({"messageId": "   "}, None),
        ({"data": "3EB0"}, None),
        ([{"messageId": "x"}], None),
        ("3EB0", None),
        (None, None),
    ],
)
def test_extract_message_id_order_and_never_invents(body: Any, expected: str | None) -> None:
    assert extract_message_id(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"insertedId": "Q1"}, "Q1"), ({"insertedId": 42}, "42"), ({"data": {"insertedId": "Q2"}}, "Q2"), ({}, None)],
)
def test_extract_queue_id(body: Any, expected: str | None) -> None:
    assert extract_queue_id(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": True, "message": "x"}, True),
        ({"error": "instance not connected"}, True),
        ({"data": {"error": True}}, True),
        ({"error": False, "messageId": "x"}, False),
        ({"error": ""}, False),
        ({"error": "false"}, False),
        ({"messageId": "x"}, False),
        ([], False),
    ],
)
def test_is_error_body(body: Any, expected: bool) -> None:
    assert is_error_body(body) is expected


def test_error_message_prefers_message() -> None:
    assert error_message({"error": "E", "message": "M"}) == "M"
    assert error_message({"error": "only error"}) == "only error"
    assert error_message({"error": True}) == ""


# --- status answers ------------------------------------------------------------------------------

P = "5511999990000"


@pytest.mark.parametrize(
    "body",
    [
        {"connected": True, "phone": P},
        {"connected": True, "phoneNumber": P},
        {"connected": True, "connectedPhone": P},
        {"connected": True, "me": {"id": f"{P}@s.whatsapp.net"}},
        {"connected": True, "me": {"id": f"{P}:12@s.whatsapp.net"}},
        {"me": {"id": f"{P}:3@s.whatsapp.net"}},
        {"wid": {"user": P}},
        {"connected": True, "wid": {"user": P, "server": "c.us"}},
        {"state": "open", "phone": P},
        {"state": "CONNECTED", "phoneNumber": P},
        {"status": "connected", "phone": P},
        {"connectionState": "open", "me": {"id": f"{P}@s.whatsapp.net"}},
        {"data": {"connected": True, "phone": P}},
        {"data": {"state": "open", "me": {"id": f"{P}:1@s.whatsapp.net"}}},
        {"connected": "true", "phone": f"+{P}"},
        {"connected": True, "phone": P, "qrcode": ""},
    ],
)
def test_parse_status_connected_with_phone(body: Any) -> None:
    outcome = parse_status(body)
    assert (outcome.connected, outcome.phone, outcome.failure) == (True, P, None)


@pytest.mark.parametrize(
    "body",
    [
        {"connected": True},
        {"connected": True, "phone": None},
        {"connected": True, "phone": ""},
        {"connected": True, "me": {}},
        {"state": "open"},
        {"status": "connected"},
        {"connectionState": "open"},
        {"data": {"connected": True}},
        {"connected": True, "phone": "176488829694091@lid"},
    ],
)
def test_parse_status_connected_without_phone_is_reported_not_judged(body: Any) -> None:
    outcome = parse_status(body)
    assert (outcome.connected, outcome.phone, outcome.failure) == (True, None, None)


@pytest.mark.parametrize(
    "body",
    [
        {"connected": False},
        {"connected": False, "qrcode": "data:image/png;base64,AAAA"},
        {"qrcode": "data:image/png;base64,AAAA"},
        {"qrCode": "data:image/png;base64,AAAA"},
        {"qr": "2@abc,def"},
        {"base64": "data:image/png;base64,AAAA"},
        {"data": {"connected": False, "qrCode": "x"}},
        {"state": "close"},
        {"connected": True, "qrcode": "data:image/png;base64,AAAA"},  # a QR on offer means not paired
    ],
)
def test_parse_status_disconnected(body: Any) -> None:
    outcome = parse_status(body)
    assert (outcome.connected, outcome.failure) == (False, None)


@pytest.mark.parametrize("body", [{}, {"foo": "bar"}, {"error": True, "message": "boom"}, [], "ok", None])
def test_parse_status_unrecognised_is_gateway_trouble_not_disconnected(body: Any) -> None:
    outcome = parse_status(body)
    assert outcome.connected is None
    assert outcome.failure is Reason.TIMEOUT_OR_GATEWAY


def test_parse_status_reports_lid() -> None:
    outcome = parse_status({"connected": True, "phone": P, "connectedLid": "176488829694091@lid"})
    assert outcome.lid == "176488829694091@lid"


@pytest.mark.parametrize(
    ("value", "phone"),
    [
        ("5511999990000@s.whatsapp.net", "5511999990000"),
        ("5511999990000:42@s.whatsapp.net", "5511999990000"),
        ("5511999990000@c.us", "5511999990000"),
        ("176488829694091@lid", None),
        ("", None),
        (5511999990000, "5511999990000"),
        (True, None),
    ],
)
def test_jid_to_phone(value: Any, phone: str | None) -> None:
    assert jid_to_phone(value) == phone
