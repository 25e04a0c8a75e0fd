"""Customer messages (webhookReceived) and phone-sent ones (webhookDelivery) in one shape."""

from __future__ import annotations

import json

import pytest

from adapters.wapi.webhooks import normalize_inbound

DOCUMENTED = {
    "event": "webhookReceived",
    "instanceId": "CYAJQL-HIIWWG-S6RU9I",
    "connectedPhone": "559992249708",
    "isGroup": False,
    "messageId": "3EB00CD0857BA22EAEDCD9",
    "fromMe": False,
    "chat": {"id": "559999999999", "profilePicture": "https://pps.example/a.jpg"},
    "sender": {"id": "559999999999", "profilePicture": "https://pps.example/a.jpg", "pushName": "Maria"},
    "moment": 1749132337,
    "msgContent": {"extendedTextMessage": {"text": "teste"}},
}


def test_documented_received_text() -> None:
    msg = normalize_inbound(json.dumps(DOCUMENTED).encode())
    assert msg is not None
    assert (msg.instance_id, msg.provider_message_id, msg.chat_id) == (
        "CYAJQL-HIIWWG-S6RU9I",
        "3EB00CD0857BA22EAEDCD9",
        "559999999999",
    )
    assert (msg.sender_id, msg.sender_phone, msg.push_name) == ("559999999999", "559999999999", "Maria")
    assert (msg.kind, msg.text, msg.media) == ("text", "teste", None)
    assert msg.connected_phone == "559992249708"
    assert msg.moment is not None
    assert msg.moment.timestamp() == 1749132337
    assert not msg.from_me
    assert not msg.is_group


def test_image_with_caption_is_a_media_reference() -> None:
    body = dict(
        DOCUMENTED,
        msgContent={
            "imageMessage": {
                "url": "https://mmg.whatsapp.net/x.enc",
                "mimetype": "image/jpeg",
                "caption": "nota fiscal",
                "fileLength": "52344",
                "directPath": "/v/t62/x.enc",
            }
        },
    )
    msg = normalize_inbound(body)
    assert msg is not None
    assert msg.kind == "image"
    assert msg.text == "nota fiscal"
    assert msg.media is not None
    assert msg.media.url == "https://mmg.whatsapp.net/x.enc"
    assert msg.media.mimetype == "image/jpeg"
    assert msg.media.file_length == 52344


@pytest.mark.parametrize(
    ("content", "kind", "text"),
    [
        ({"conversation": "oi"}, "text", "oi"),
        ({"audioMessage": {"mimetype": "audio/ogg; codecs=opus", "url": "https://m/a"}}, "audio", None),
        ({"documentMessage": {"fileName": "boleto.pdf", "mimetype": "application/pdf"}}, "document", None),
        (
            {"locationMessage": {"degreesLatitude": -23.5, "degreesLongitude": -46.6, "name": "Loja"}},
            "location",
            "Loja",
        ),
        ({"contactMessage": {"displayName": "João"}}, "contact", "João"),
        ({"reactionMessage": {"text": "👍", "key": {"id": "3EB0AAA"}}}, "reaction", "👍"),
        ({"ephemeralMessage": {"message": {"extendedTextMessage": {"text": "some"}}}}, "text", "some"),
        ({"viewOnceMessageV2": {"message": {"imageMessage": {"url": "https://m/i"}}}}, "image", None),
    ],
)
def test_content_kinds(content: dict, kind: str, text: str | None) -> None:
    msg = normalize_inbound(dict(DOCUMENTED, msgContent=content))
    assert msg is not None
    assert (msg.kind, msg.text) == (kind, text)


def test_reaction_points_at_its_message_and_location_has_coordinates() -> None:
    reaction = normalize_inbound(dict(DOCUMENTED, msgContent={"reactionMessage": {"text": "❤", "key": {"id": "3EBX"}}}))
    assert reaction is not None
    assert reaction.reference_message_id == "3EBX"
    place = normalize_inbound(
        dict(DOCUMENTED, msgContent={"locationMessage": {"degreesLatitude": -23.5, "degreesLongitude": "-46.6"}})
    )
    assert place is not None
    assert (place.latitude, place.longitude) == (-23.5, -46.6)


def test_variant_under_data_with_plain_ids() -> None:
    body = {
        "event": "webhookReceived",
        "data": {
            "instanceId": "INST-1",
            "id": "ABCDEF123",
            "chat": "5511988887777@s.whatsapp.net",
            "sender": "5511988887777@s.whatsapp.net",
            "pushName": "Zé",
            "text": "quero pagar",
            "timestamp": 1749132337000,
        },
    }
    msg = normalize_inbound(body)
    assert msg is not None
    assert msg.instance_id == "INST-1"
    assert msg.provider_message_id == "ABCDEF123"
    assert msg.sender_phone == "5511988887777"
    assert msg.push_name == "Zé"
    assert (msg.kind, msg.text) == ("text", "quero pagar")
    assert msg.moment is not None
    assert msg.moment.timestamp() == 1749132337


def test_group_message_keeps_sender_apart_from_chat() -> None:
    body = dict(
        DOCUMENTED,
        isGroup=True,
        chat={"id": "120363040000000000@g.us"},
        sender={"id": "5511977776666@s.whatsapp.net", "pushName": "Ana"},
    )
    msg = normalize_inbound(body)
    assert msg is not None
    assert msg.is_group
    assert msg.chat_id == "120363040000000000@g.us"
    assert msg.sender_phone == "5511977776666"


def test_delivery_from_the_phone_itself() -> None:
    body = dict(DOCUMENTED, event="webhookDelivery", fromMe=True, connectedLid="176488829694091@lid")
    body.pop("sender")
    msg = normalize_inbound(body)
    assert msg is not None
    assert msg.from_me
    assert not msg.from_api
    assert msg.sender_id is None  # the phone's owner, not the chat
    api = normalize_inbound(dict(body, fromApi=True))
    assert api is not None
    assert api.from_api


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'"text"'])
def test_not_an_object_is_none(raw: bytes) -> None:
    assert normalize_inbound(raw) is None


def test_hostile_values_are_cleaned_not_raised() -> None:
    body = dict(DOCUMENTED, msgContent={"conversation": "a\x00b\ud800"}, sender={"id": 5, "pushName": ["x"]})
    msg = normalize_inbound(body)
    assert msg is not None
    assert msg.text is not None
    assert "\x00" not in msg.text
    msg.text.encode("utf-8")
    assert msg.push_name is None
