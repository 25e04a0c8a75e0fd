"""Inbound messages in one shape whatever provider posted them (the event feed's InboundMessage).

The body stored with an inbound change is the provider's own; this picks its dialect (Z-API's
`ReceivedCallback`, Evolution's `messages.upsert` envelope, W-API otherwise) and normalizes it
into adapters.wapi.webhooks.InboundMessage, so the feed reads the same fields on every provider.
"""

from __future__ import annotations

from typing import Any

from adapters.wapi.webhooks import InboundMessage, MediaReference, inbound_record
from adapters.wapi.webhooks import normalize_inbound as normalize_wapi
from adapters.webhook_common import as_dict, instance_id, json_object, message_id, moment, text
from statemachine.phone import e164_phone

_ZAPI_MEDIA = {
    "image": ("imageUrl", "image"),
    "audio": ("audioUrl", "audio"),
    "video": ("videoUrl", "video"),
    "document": ("documentUrl", "document"),
    "sticker": ("stickerUrl", "sticker"),
}


def normalize_zapi(body: dict[str, Any]) -> InboundMessage:
    """A Z-API ReceivedCallback (developer.z-api.io, webhooks/on-message-received)."""
    chat = text(body.get("phone"), 128)
    is_group = body.get("isGroup") is True
    from_me = body.get("fromMe") is True
    sender = text(body.get("participantPhone"), 128) if is_group else (None if from_me else chat)
    kind, content, media = "unknown", None, None
    for key, (url_key, name) in _ZAPI_MEDIA.items():
        part = as_dict(body.get(key))
        if part:
            kind = name
            content = text(part.get("caption"), 65536)
            media = MediaReference(
                url=text(part.get(url_key), 2048),
                mimetype=text(part.get("mimeType"), 128),
                file_name=text(part.get("fileName"), 512),
                caption=content,
            )
            break
    if kind == "unknown":
        if isinstance(as_dict(body.get("text")).get("message"), str):
            kind, content = "text", text(as_dict(body.get("text")).get("message"), 65536)
        elif as_dict(body.get("location")):
            kind = "location"
        elif as_dict(body.get("contact")):
            kind, content = "contact", text(as_dict(body.get("contact")).get("displayName"), 65536)
        elif as_dict(body.get("reaction")):
            kind, content = "reaction", text(as_dict(body.get("reaction")).get("value"), 64)
    location = as_dict(body.get("location"))
    lat, lng = location.get("latitude"), location.get("longitude")
    return InboundMessage(
        instance_id=instance_id(body.get("instanceId")),
        provider_message_id=message_id(body.get("messageId")),
        chat_id=chat,
        sender_id=sender,
        sender_phone=e164_phone(sender) if sender else None,
        push_name=text(body.get("senderName") or body.get("chatName")),
        kind=kind,
        text=content,
        media=media,
        is_group=is_group,
        from_me=from_me,
        from_api=from_me and body.get("fromApi") is True,
        moment=moment(body.get("momment")),
        connected_phone=e164_phone(body.get("connectedPhone")),
        reference_message_id=message_id(body.get("referenceMessageId")),
        latitude=float(lat) if isinstance(lat, (int, float)) and not isinstance(lat, bool) else None,
        longitude=float(lng) if isinstance(lng, (int, float)) and not isinstance(lng, bool) else None,
    )


def normalize_evolution(body: dict[str, Any]) -> InboundMessage | None:
    """An Evolution messages.upsert envelope: its `data` is Baileys' message, as W-API's is; the
    key names differ (`key.remoteJid`, `key.fromMe`, `pushName`, `messageTimestamp`)."""
    data = as_dict(body.get("data"))
    key = as_dict(data.get("key"))
    chat = key.get("remoteJid")
    reshaped = {
        "instanceId": body.get("instance"),
        "messageId": key.get("id"),
        "chat": {"id": chat},
        "sender": {
            "id": key.get("participant") or (None if key.get("fromMe") else chat),
            "pushName": data.get("pushName"),
        },
        "msgContent": data.get("message"),
        "fromMe": key.get("fromMe") is True,
        "moment": data.get("messageTimestamp"),
        "isGroup": isinstance(chat, str) and chat.endswith("@g.us"),
    }
    return normalize_wapi(reshaped)


def with_message(payload: dict[str, Any]) -> dict[str, Any]:
    """An inbound change's payload with its normalized `message`: rows written before the parsers
    stored it carry only the provider's body, normalized here on read (once, in the adapters)."""
    if "message" in payload or not isinstance(payload.get("body"), dict):
        return payload
    return payload | {"message": inbound_record(normalize_inbound(payload["body"]))}


def normalize_inbound(raw: bytes | dict[str, Any]) -> InboundMessage | None:
    """Any provider's inbound body → InboundMessage; None when it is not a JSON object."""
    body = json_object(raw)
    if body is None:
        return None
    if body.get("type") == "ReceivedCallback":
        return normalize_zapi(body)
    event = body.get("event")
    if isinstance(event, str) and event.lower().replace("_", ".") == "messages.upsert" and "data" in body:
        return normalize_evolution(body)
    return normalize_wapi(body)
