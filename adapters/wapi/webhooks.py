"""W-API webhook bodies → ProviderEvent. Pure; shared by the service and the simulator's tests.

Shapes and names come from docs/wapi-contract.md. Facts marked inferred there are in the tables
below, so a correction is one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from adapters.webhook_common import json_object
from statemachine.domain import MessageState
from statemachine.events import EventReason, ProviderEvent, Route
from statemachine.phone import e164_phone

# `event` value (lower-cased) → route. message-status names from CRM webhook parsers (inferred).
EVENT_ROUTES: dict[str, Route] = {
    "webhookconnected": Route.CONNECTION,
    "connection": Route.CONNECTION,
    "connected": Route.CONNECTION,
    "webhookdisconnected": Route.DISCONNECTION,
    "disconnection": Route.DISCONNECTION,
    "disconnected": Route.DISCONNECTION,
    "webhookstatus": Route.MESSAGE_STATUS,
    "message-status": Route.MESSAGE_STATUS,
    "message_status": Route.MESSAGE_STATUS,
    "message_ack": Route.MESSAGE_STATUS,
    "messagestatus": Route.MESSAGE_STATUS,
    "webhookdelivery": Route.DELIVERY,
    "delivery": Route.DELIVERY,
    "webhookreceived": Route.RECEIVED,
    "received": Route.RECEIVED,
    "webhookpresence": Route.PRESENCE,
    "webhookchatpresence": Route.PRESENCE,
    "chat-presence": Route.PRESENCE,
    "presence": Route.PRESENCE,
}

# Status words → message state. Upper-case Baileys names too.
STATUS_WORDS: dict[str, MessageState] = {
    "sent": MessageState.SENT,
    "server_ack": MessageState.SENT,
    "delivered": MessageState.DELIVERED,
    "delivery_ack": MessageState.DELIVERED,
    "received": MessageState.DELIVERED,
    "read": MessageState.READ,
    "seen": MessageState.READ,
    "played": MessageState.PLAYED,
    "failed": MessageState.FAILED,
    "error": MessageState.FAILED,
}
# `ack` numbers (inferred: Baileys' WebMessageInfo.Status, which W-API runs on).
ACK_NUMBERS: dict[int, MessageState] = {
    0: MessageState.FAILED,
    2: MessageState.SENT,
    3: MessageState.DELIVERED,
    4: MessageState.READ,
    5: MessageState.PLAYED,
}
PRESENCE_WORDS = frozenset({"composing", "recording", "paused", "available", "unavailable", "typing"})
# The event-less body of the brief: exactly these keys, once dropped as "Unroutable".
CHAT_STATUS_KEYS = frozenset({"instanceId", "connectedPhone", "connectedLid", "chat", "status", "moment"})

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_FIELD = 256
# Column sizes of the stored event (adapters/persistence/schema.py).
MAX_MESSAGE_ID = 128
MAX_CHAT_ID = 128
MAX_STATUS = 32
MAX_LID = 64


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _body_key(body: Any) -> str:
    """The dedupe key of a parsed body without a stronger key: its canonical JSON's digest, so the
    same event re-posted or replayed from W-API's webhook log (re-serialized, keys in another
    order, other spacing) is recognised as the same event."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))  # ASCII: lone surrogates too
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


MAX_DEDUPE_KEY = 200  # events.dedupe_key


def status_key(instance_id: str, message_id: str, status: MessageState) -> str:
    """One key per (instance, message, status): a re-delivered status is applied once."""
    key = f"status:{instance_id}:{message_id}:{status}"
    if len(key) > MAX_DEDUPE_KEY:
        key = "status:sha256:" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _field(body: dict[str, Any], *names: str) -> Any:
    """First present key, in the body or nested under `data` (CRM webhook parsers read both)."""
    data = body.get("data")
    for name in names:
        if name in body and body[name] not in (None, ""):
            return body[name]
        if isinstance(data, dict) and name in data and data[name] not in (None, ""):
            return data[name]
    return None


def _text(value: Any, limit: int = _MAX_FIELD) -> str | None:
    """A clean string field: storable as UTF-8 text on every database (no NUL, no lone
    surrogates from `\\ud800` escapes), or None."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value).replace("\x00", "").strip()
        text = text.encode("utf-8", "replace").decode("utf-8")[:limit]
        return text or None
    return None


def _id(value: Any) -> str | None:
    """Provider message ids are short tokens (3EB0… is 32 chars); anything else is not one."""
    text = _text(value, MAX_MESSAGE_ID + 1)
    return text if text and len(text) <= MAX_MESSAGE_ID else None


def _connected(value: Any) -> bool:
    """`connected` as sent: a boolean, a number or a word. A missing key on a connection event
    means connected (its name says so); anything unreadable is not a claim of a session."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off", "")
    return False


def phone_digits(value: Any) -> str | None:
    """'5511999@s.whatsapp.net' or '5511999:12@s.whatsapp.net' → '5511999'; junk, LIDs → None."""
    return e164_phone(value)


def _phone(body: dict[str, Any]) -> str | None:
    for value in (
        _field(body, "connectedPhone", "phone", "phoneNumber"),
        (_field(body, "me") or {}).get("id") if isinstance(_field(body, "me"), dict) else None,
        (_field(body, "wid") or {}).get("user") if isinstance(_field(body, "wid"), dict) else None,
    ):
        phone = phone_digits(value)
        if phone:
            return phone
    return None


def _moment(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = value / 1000 if value > 1e12 else value
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _status(value: Any) -> tuple[MessageState | None, str | None]:
    if isinstance(value, bool):
        return None, None
    if isinstance(value, int):
        return ACK_NUMBERS.get(value), str(value)[:MAX_STATUS]
    text = _text(value, MAX_STATUS)
    if text is None:
        return None, None
    return STATUS_WORDS.get(text.lower()), text.lower()


def _chat_id(body: dict[str, Any]) -> str | None:
    chat = _field(body, "chat")
    if isinstance(chat, dict):
        return _text(chat.get("id"), MAX_CHAT_ID)
    return _text(chat, MAX_CHAT_ID) or _text(_field(body, "chatId", "phone"), MAX_CHAT_ID)


def _message_id(body: dict[str, Any]) -> str | None:
    mid = _id(_field(body, "messageId", "id", "msgId"))
    if mid is None:
        chat = _field(body, "chat")
        if isinstance(chat, dict):
            mid = _id(chat.get("messageId"))
    return mid


def parse_webhook(raw: bytes) -> ProviderEvent:
    """Never raises: anything it cannot use becomes an UNROUTABLE event with a reason."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return ProviderEvent(Route.UNROUTABLE, EventReason.MALFORMED_JSON, _digest(raw))
    try:
        return _parse_body(raw, body)
    except RecursionError:  # nested deeper than re-encoding it for its dedupe key can go
        return ProviderEvent(Route.UNROUTABLE, EventReason.MALFORMED_JSON, _digest(raw))


def _parse_body(raw: bytes, body: Any) -> ProviderEvent:
    if not isinstance(body, dict):
        return ProviderEvent(Route.UNROUTABLE, EventReason.NOT_AN_OBJECT, _body_key(body))

    instance_text = _text(_field(body, "instanceId", "instance_id"))
    instance_id = instance_text if instance_text and _ID_RE.fullmatch(instance_text) else None
    moment = _moment(_field(body, "moment", "timestamp"))
    event_name = _text(body.get("event") or body.get("type"), 64)

    if event_name is None:
        if body.keys() >= CHAT_STATUS_KEYS or {"instanceId", "chat", "status"} <= body.keys():
            return _chat_status(raw, body, instance_id, moment)
        return ProviderEvent(Route.UNROUTABLE, EventReason.NO_EVENT_KEY, _body_key(body), instance_id)

    route = EVENT_ROUTES.get(event_name.lower())
    if route is None:
        return ProviderEvent(
            Route.UNROUTABLE, f"{EventReason.UNKNOWN_EVENT}:{event_name[:64]}", _body_key(body), instance_id
        )
    if instance_id is None:
        return ProviderEvent(route, EventReason.MISSING_INSTANCE_ID, _body_key(body), None, moment=moment)

    if route is Route.CONNECTION:
        connected = _connected(body["connected"] if "connected" in body else _field(body, "connected"))
        return ProviderEvent(
            route,
            EventReason.RECORDED,
            _body_key(body),
            instance_id,
            connected=connected,
            phone=_phone(body),
            lid=_text(_field(body, "connectedLid", "lid"), MAX_LID),
            moment=moment,
        )
    if route is Route.DISCONNECTION:
        return ProviderEvent(route, EventReason.RECORDED, _body_key(body), instance_id, connected=False, moment=moment)
    if route is Route.MESSAGE_STATUS:
        mid = _message_id(body)
        status, raw_status = _status(_field(body, "status", "ack"))
        if mid is None:
            return ProviderEvent(route, EventReason.MISSING_MESSAGE_ID, _body_key(body), instance_id, moment=moment)
        if status is None:
            return ProviderEvent(
                route,
                EventReason.UNKNOWN_STATUS,
                _body_key(body),
                instance_id,
                provider_message_id=mid,
                raw_status=raw_status,
                moment=moment,
            )
        return ProviderEvent(
            route,
            EventReason.RECORDED,
            status_key(instance_id, mid, status),
            instance_id,
            provider_message_id=mid,
            status=status,
            raw_status=raw_status,
            chat_id=_chat_id(body),
            moment=moment,
        )
    mid = _message_id(body)
    from_api = body.get("fromMe") is True and body.get("fromApi") is True
    return ProviderEvent(
        route,
        EventReason.RECORDED,
        _body_key(body),
        instance_id,
        provider_message_id=mid,
        phone=_phone(body),
        chat_id=_chat_id(body),
        moment=moment,
        from_api=from_api,
        raw_status=_status(_field(body, "status"))[1],
        inbound=inbound_record(normalize_inbound(body)) if route in (Route.RECEIVED, Route.DELIVERY) else None,
    )


def _chat_status(raw: bytes, body: dict[str, Any], instance_id: str | None, moment: datetime | None) -> ProviderEvent:
    """The event-less {instanceId, connectedPhone, connectedLid, chat, status, moment} body."""
    status, raw_status = _status(body.get("status"))
    mid = _message_id(body)
    if instance_id is None:
        return ProviderEvent(Route.CHAT_STATUS, EventReason.MISSING_INSTANCE_ID, _body_key(body))
    applies = status is not None and mid is not None
    return ProviderEvent(
        Route.CHAT_STATUS,
        EventReason.RECORDED if applies else EventReason.CHAT_TELEMETRY,
        status_key(instance_id, mid, status) if status is not None and mid is not None else _body_key(body),
        instance_id,
        provider_message_id=mid,
        status=status if applies else None,
        raw_status=raw_status,
        phone=phone_digits(body.get("connectedPhone")),
        lid=_text(body.get("connectedLid"), MAX_LID),
        chat_id=_chat_id(body),
        moment=moment,
    )


# --- customer messages: webhookReceived / webhookDelivery bodies, normalised -------------------

# Baileys message-content keys (W-API's `msgContent`) → kind. `conversation` is a bare text.
CONTENT_KINDS: dict[str, str] = {
    "conversation": "text",
    "extendedTextMessage": "text",
    "imageMessage": "image",
    "audioMessage": "audio",
    "pttMessage": "audio",
    "videoMessage": "video",
    "ptvMessage": "video",
    "documentMessage": "document",
    "documentWithCaptionMessage": "document",
    "stickerMessage": "sticker",
    "locationMessage": "location",
    "liveLocationMessage": "location",
    "contactMessage": "contact",
    "contactsArrayMessage": "contact",
    "reactionMessage": "reaction",
    "buttonsResponseMessage": "text",
    "listResponseMessage": "text",
    "templateButtonReplyMessage": "text",
    "pollCreationMessage": "poll",
    "pollCreationMessageV3": "poll",
}
# Wrappers whose `message` holds the real content (view-once, ephemeral, edited, captioned documents).
CONTENT_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "viewOnceMessageV2",
    "editedMessage",
    "documentWithCaptionMessage",
)
MAX_TEXT = 65536


@dataclass(frozen=True, slots=True)
class MediaReference:
    """Where the media lives on WhatsApp's side; wapi-guard does not download it."""

    url: str | None = None
    mimetype: str | None = None
    file_name: str | None = None
    file_length: int | None = None
    caption: str | None = None
    direct_path: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A customer's (or the phone's own) message, in one shape whatever W-API variant carried it."""

    instance_id: str | None
    provider_message_id: str | None
    chat_id: str | None
    sender_id: str | None
    sender_phone: str | None
    push_name: str | None
    kind: str
    text: str | None = None
    media: MediaReference | None = None
    is_group: bool = False
    from_me: bool = False
    from_api: bool = False
    moment: datetime | None = None
    connected_phone: str | None = None
    # A reaction's target, a reply's quoted message.
    reference_message_id: str | None = None
    latitude: float | None = None
    longitude: float | None = None


def inbound_record(msg: InboundMessage | None) -> dict[str, Any] | None:
    """An InboundMessage as stored in the change log (JSON-ready; the moment in ISO 8601)."""
    if msg is None:
        return None
    record = asdict(msg)
    record["moment"] = msg.moment.isoformat() if msg.moment else None
    return record


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _content(body: dict[str, Any]) -> dict[str, Any]:
    """The Baileys content object: `msgContent` (W-API), `message` or `content`, top level or under `data`."""
    content = _dict(_field(body, "msgContent", "message", "content"))
    for _ in range(3):  # wrappers nest a few levels at most
        inner = next((content[w] for w in CONTENT_WRAPPERS if isinstance(content.get(w), dict)), None)
        if inner is None or not isinstance(inner.get("message"), dict):
            break
        content = inner["message"]
    return content


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _kind_and_body(content: dict[str, Any]) -> tuple[str, dict[str, Any] | str | None]:
    for key, kind in CONTENT_KINDS.items():
        if key in content:
            return kind, content[key]
    return "unknown", None


def normalize_inbound(raw: bytes | dict[str, Any]) -> InboundMessage | None:
    """webhookReceived / webhookDelivery body → InboundMessage; None when it is not a JSON object.

    Accepts the documented shape (`chat`, `sender`, `msgContent`) and the variants seen in clients:
    fields under `data`, `chat`/`sender` as plain ids, `text`/`body` at the top level, `pushName`
    beside `sender`, Baileys wrappers (ephemeral, view-once)."""
    body = json_object(raw)
    if body is None:
        return None
    instance_text = _text(_field(body, "instanceId", "instance_id"))
    sender_value = _field(body, "sender", "from", "author")
    sender = _dict(sender_value)
    sender_id = _text(sender.get("id"), MAX_CHAT_ID) if sender else _text(sender_value, MAX_CHAT_ID)
    push_name = _text(sender.get("pushName") or sender.get("name")) or _text(_field(body, "pushName", "senderName"))
    content = _content(body)
    kind, detail = _kind_and_body(content)
    text: str | None = None
    media: MediaReference | None = None
    reference: str | None = None
    latitude = longitude = None
    if isinstance(detail, str):
        text = _text(detail, MAX_TEXT)
    elif isinstance(detail, dict):
        text = _text(
            detail.get("text") or detail.get("caption") or detail.get("selectedDisplayText") or detail.get("title"),
            MAX_TEXT,
        )
        if kind in ("image", "audio", "video", "document", "sticker"):
            length = detail.get("fileLength")
            media = MediaReference(
                url=_text(detail.get("url"), 2048),
                mimetype=_text(detail.get("mimetype"), 128),
                file_name=_text(detail.get("fileName"), 512),
                file_length=int(length) if isinstance(length, (int, str)) and str(length).isdigit() else None,
                caption=_text(detail.get("caption"), MAX_TEXT),
                direct_path=_text(detail.get("directPath"), 2048),
            )
        if kind == "location":
            latitude, longitude = _number(detail.get("degreesLatitude")), _number(detail.get("degreesLongitude"))
            text = text or _text(detail.get("name") or detail.get("address"), MAX_TEXT)
        if kind == "contact":
            text = text or _text(detail.get("displayName") or detail.get("vcard"), MAX_TEXT)
        if kind == "reaction":
            reference = _id(_dict(detail.get("key")).get("id"))
        context = _dict(detail.get("contextInfo"))
        reference = reference or _id(context.get("stanzaId"))
    if kind == "unknown":
        flat = _text(_field(body, "text", "body", "caption"), MAX_TEXT)
        if flat is not None:
            kind, text = "text", flat
    chat_id = _chat_id(body)
    from_me = body.get("fromMe") is True or _dict(body.get("data")).get("fromMe") is True
    return InboundMessage(
        instance_id=instance_text if instance_text and _ID_RE.fullmatch(instance_text) else None,
        provider_message_id=_message_id(body),
        chat_id=chat_id,
        sender_id=sender_id or (None if from_me else chat_id),
        sender_phone=phone_digits(sender_id or ("" if from_me else chat_id)),
        push_name=push_name,
        kind=kind,
        text=text,
        media=media,
        is_group=_field(body, "isGroup") is True or bool(chat_id and chat_id.endswith("@g.us")),
        from_me=from_me,
        from_api=from_me and (body.get("fromApi") is True or _dict(body.get("data")).get("fromApi") is True),
        moment=_moment(_field(body, "moment", "timestamp")),
        connected_phone=phone_digits(_field(body, "connectedPhone")),
        reference_message_id=reference,
        latitude=latitude,
        longitude=longitude,
    )
