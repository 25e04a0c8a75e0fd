"""Bodies the W-API simulator answers and posts, shaped after docs/wapi-contract.md. Pure: no I/O.

Shapes marked **(inferred)** follow client code, not W-API's own reference (see docs/wapi-contract.md); shapes
marked **(guess)** are not documented anywhere and only need to be plausible.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

JSONDict = dict[str, Any]

# --- vocabulary ----------------------------------------------------------------------------------

BEHAVIOURS: Final = (
    "healthy",
    "session_incomplete",
    "silent_stall",
    "timeout",
    "gateway_error",
    "disconnected",
    "token_invalid",
    "deleted",
    "accepted_without_id",
    "accepted_with_error",
    "accepted_queued",  # sends answer only {"insertedId"}: queued at W-API, never leaves the queue
    "acking_stall",  # sends accepted and acked ("sent": on WhatsApp's servers), never delivered
)

# How an instance acks an accepted send (the message left the phone / reached WhatsApp's servers):
# a `sent` message status, a webhookDelivery (fromMe, fromApi), both, or not at all (webhooks
# configured without them). Healthy sessions ack every send, offline recipients included; a
# silent stall or an incomplete session acks nothing.
ACK_STYLES: Final = ("status", "delivery", "both", "none")

# How a *connected* status answer is spelled (docs/wapi-contract.md, "Instance status").
STATUS_STYLES: Final = (
    "phone",  # {"connected": true, "phone": P}
    "phoneNumber",  # {"connected": true, "phoneNumber": P}
    "connectedPhone",  # {"connected": true, "connectedPhone": P}
    "me_id",  # {"connected": true, "me": {"id": "P:7@s.whatsapp.net"}}
    "wid",  # {"wid": {"user": P, "server": "c.us"}}  (identity only, no `connected` key)
    "state_open",  # {"state": "open", "phoneNumber": P}
    "state_connected",  # {"state": "connected", "phone": P}
    "status_connected",  # {"status": "connected", "phone": P}
    "connectionState",  # {"connectionState": "open", "me": {"id": "P@s.whatsapp.net"}}
    "data_nested",  # {"data": {"connected": true, "phone": P}}
)

EMIT_KINDS: Final = (
    "status",
    "duplicate_status",
    "out_of_order",
    "eventless",
    "connected",
    "connected_without_phone",
    "disconnected",
    "delivery",
    "received",
)

MESSAGE_STATUSES: Final = ("sent", "delivered", "read", "played", "failed")
DEFAULT_LID: Final = "176488829694091@lid"

# A real (1x1, transparent) PNG, so `qr-code?image=enable` and the base64 QR are decodable.
PNG_1X1: Final = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000b49444154789c6360000200000500017a5eab3f0000000049454e44ae426082"
)
QR_DATA_URL: Final = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAAC0lEQVR4nGNgAAIAAAUAAXpeqz8AAAAASUVORK5CYII="
)

# --- send requests -------------------------------------------------------------------------------

# Required body keys per send endpoint (docs/wapi-contract.md, "Sending"); location coordinates are strings.
SEND_REQUIRED: Final[Mapping[str, tuple[str, ...]]] = {
    "send-text": ("phone", "message"),
    "send-image": ("phone", "image"),
    "send-audio": ("phone", "audio"),
    "send-video": ("phone", "video"),
    "send-document": ("phone", "document", "fileName"),
    "send-location": ("phone", "name", "address", "latitude", "longitude"),
    "send-contact": ("phone", "contactName", "contactPhone"),
    "send-sticker": ("phone", "sticker"),
    "send-reaction": ("phone", "reaction", "messageId"),
}
STRING_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {"send-location": ("latitude", "longitude")}
MAY_BE_EMPTY: Final[Mapping[str, tuple[str, ...]]] = {"send-location": ("name", "address")}
# LITE plans cannot use these (docs/wapi-contract.md, "Basics").
PRO_ONLY_ENDPOINTS: Final = frozenset({"send-sticker", "send-reaction"})


def validate_send(endpoint: str, body: Any, plan: str) -> str | None:
    """Why W-API would refuse this body (400), or None when it is well formed."""
    if not isinstance(body, Mapping):
        return "body must be a JSON object"
    required = SEND_REQUIRED.get(endpoint)
    if required is None:
        return f"unknown endpoint {endpoint}"
    may_be_empty = MAY_BE_EMPTY.get(endpoint, ())
    missing = [key for key in required if body.get(key) is None or (body.get(key) == "" and key not in may_be_empty)]
    if missing:
        return f"missing required field(s): {', '.join(missing)}"
    wrong = [key for key in STRING_FIELDS.get(endpoint, ()) if not isinstance(body.get(key), str)]
    if wrong:
        return f"field(s) must be strings: {', '.join(wrong)}"
    delay = body.get("delayMessage")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int)):
        return "delayMessage must be an integer number of seconds"
    if plan.upper() == "LITE" and endpoint in PRO_ONLY_ENDPOINTS:
        return "recurso disponível apenas no plano PRO"  # (guess) wording
    return None


def new_message_id() -> str:
    """A WhatsApp-like message id: 32 uppercase hex digits starting with 3EB0."""
    return "3EB0" + secrets.token_hex(14).upper()


def send_accepted(message_id: str) -> JSONDict:
    return {"messageId": message_id}  # (inferred) W-API's id key, client code


def send_accepted_without_id() -> JSONDict:
    return {"success": True}


def send_queued(queue_id: str) -> JSONDict:
    """(inferred) W-API's send queue answers with its handle only, no message id."""
    return {"error": False, "insertedId": queue_id}


def error_body(message: str) -> JSONDict:
    return {"error": True, "message": message}


# --- status answers ------------------------------------------------------------------------------


def status_connected(phone: str, style: str = "phone") -> JSONDict:
    """A *connected with phone* status-instance answer in one of STATUS_STYLES."""
    if style == "phone":
        return {"connected": True, "phone": phone}
    if style == "phoneNumber":
        return {"connected": True, "phoneNumber": phone}
    if style == "connectedPhone":
        return {"connected": True, "connectedPhone": phone}
    if style == "me_id":
        return {"connected": True, "me": {"id": f"{phone}:7@s.whatsapp.net", "name": "Atendimento"}}
    if style == "wid":
        return {"wid": {"user": phone, "server": "c.us", "_serialized": f"{phone}@c.us"}}
    if style == "state_open":
        return {"state": "open", "phoneNumber": phone}
    if style == "state_connected":
        return {"state": "connected", "phone": phone}
    if style == "status_connected":
        return {"status": "connected", "phone": phone}
    if style == "connectionState":
        return {"connectionState": "open", "me": {"id": f"{phone}@s.whatsapp.net"}}
    if style == "data_nested":
        return {"data": {"connected": True, "phone": phone}}
    raise ValueError(f"unknown status style {style!r}")


def status_incomplete(style: str = "phone") -> JSONDict:
    """Connected *without* any phone: the incomplete session, spelled like `style`."""
    if style in ("state_open", "connectionState"):
        return {"connectionState": "open"} if style == "connectionState" else {"state": "open"}
    if style == "state_connected":
        return {"state": "connected"}
    if style == "status_connected":
        return {"status": "connected"}
    if style == "data_nested":
        return {"data": {"connected": True}}
    if style in ("me_id", "wid"):
        return {"connected": True, "me": {}}
    return {"connected": True}


def status_disconnected() -> JSONDict:
    return {"connected": False, "qrcode": QR_DATA_URL}


def qr_code_answer(connected: bool) -> JSONDict:
    """`GET /instance/qr-code` (guess): QR while waiting, a plain flag when already paired."""
    if connected:
        return {"connected": True, "message": "instance already connected"}
    return {"connected": False, "qrcode": QR_DATA_URL}


def fetch_instance_answer(instance_id: str, phone: str | None, connected: bool, plan: str) -> JSONDict:
    """`GET /instance/fetch-instance` (guess)."""
    answer: JSONDict = {
        "instanceId": instance_id,
        "instanceName": f"sim-{instance_id}",
        "connected": connected,
        "plan": plan,
    }
    if phone:
        answer["connectedPhone"] = phone
    return answer


# --- gateway trouble -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayVariant:
    name: str
    status: int
    content_type: str
    body: bytes


GATEWAY_502_HTML: Final = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
GATEWAY_504_HTML: Final = (
    b"<html><head><title>504 Gateway Time-out</title></head>"
    b"<body><center><h1>504 Gateway Time-out</h1></center><hr><center>nginx</center></body></html>"
)
GATEWAY_200_HTML: Final = (
    b"<!DOCTYPE html><html><head><title>W-API</title></head><body><p>Instance unavailable</p></body></html>"
)

# Deterministic rotation, per instance, across every endpoint it answers.
GATEWAY_VARIANTS: Final = (
    GatewayVariant("502_html", 502, "text/html", GATEWAY_502_HTML),
    GatewayVariant("503_json", 503, "application/json", b'{"message":"Service Unavailable"}'),
    GatewayVariant("504_html", 504, "text/html", GATEWAY_504_HTML),
    GatewayVariant("200_html", 200, "text/html; charset=utf-8", GATEWAY_200_HTML),
)

# --- webhooks ------------------------------------------------------------------------------------


def now() -> int:
    return int(time.time())


def webhook_status(
    instance_id: str, phone: str, message_id: str, status: str, to: str, moment: int | None = None
) -> JSONDict:
    return {
        "event": "webhookStatus",
        "instanceId": instance_id,
        "connectedPhone": phone,
        "messageId": message_id,
        "status": status,
        "chat": {"id": to},
        "moment": now() if moment is None else moment,
    }


def webhook_connected(instance_id: str, phone: str | None, moment: int | None = None) -> JSONDict:
    """(inferred from CRM webhook parsers) Without `phone` the `connectedPhone` key is omitted entirely."""
    body: JSONDict = {"event": "webhookConnected", "instanceId": instance_id, "connected": True}
    if phone:
        body["connectedPhone"] = phone
    body["moment"] = now() if moment is None else moment
    return body


def webhook_disconnected(instance_id: str, moment: int | None = None) -> JSONDict:
    return {
        "event": "webhookDisconnected",
        "instanceId": instance_id,
        "connected": False,
        "moment": now() if moment is None else moment,
    }


def webhook_eventless(
    instance_id: str, phone: str, chat: str, status: str, lid: str = DEFAULT_LID, moment: int | None = None
) -> JSONDict:
    """Exactly [instanceId, connectedPhone, connectedLid, chat, status, moment]: no `event` key."""
    return {
        "instanceId": instance_id,
        "connectedPhone": phone,
        "connectedLid": lid,
        "chat": {"id": chat},
        "status": status,
        "moment": now() if moment is None else moment,
    }


def webhook_delivery(
    instance_id: str,
    phone: str,
    message_id: str,
    to: str,
    text: str = "",
    lid: str = DEFAULT_LID,
    moment: int | None = None,
) -> JSONDict:
    """A message we sent left the phone (`fromMe` and `fromApi`)."""
    return {
        "event": "webhookDelivery",
        "instanceId": instance_id,
        "connectedPhone": phone,
        "connectedLid": lid,
        "isGroup": to.endswith("@g.us"),
        "messageId": message_id,
        "fromMe": True,
        "fromApi": True,
        "chat": {"id": to},
        "moment": now() if moment is None else moment,
        "msgContent": {"extendedTextMessage": {"text": text}},
    }


def webhook_received(
    instance_id: str,
    phone: str,
    message_id: str,
    sender: str,
    text: str = "",
    push_name: str = "Cliente",
    moment: int | None = None,
) -> JSONDict:
    """An incoming message (docs/wapi-contract.md example)."""
    return {
        "event": "webhookReceived",
        "instanceId": instance_id,
        "connectedPhone": phone,
        "isGroup": sender.endswith("@g.us"),
        "messageId": message_id,
        "fromMe": False,
        "chat": {"id": sender, "profilePicture": ""},
        "sender": {"id": sender, "profilePicture": "", "pushName": push_name, "verifiedBizName": ""},
        "moment": now() if moment is None else moment,
        "msgContent": {"extendedTextMessage": {"text": text}},
    }
