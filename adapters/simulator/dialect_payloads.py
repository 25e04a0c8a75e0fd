"""The Z-API and Evolution simulators' vocabulary: behaviours, an instance, and the webhook
bodies each dialect posts (adapters/simulator/dialects.py puts them together)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any, Final

BEHAVIOURS: Final = (
    "healthy",
    "session_incomplete",
    "silent_stall",
    "acking_stall",
    "pairing",
    "restore",
    "disconnected",
    "dropped_webhooks",
)
ZAPI: Final = "zapi"
EVOLUTION: Final = "evolution"
RESTORE_ERROR: Final = "You need to restore the session."
_PNG: Final = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
JSONDict = dict[str, Any]


@dataclass(slots=True)
class DialectInstance:
    provider: str
    instance_id: str
    token: str = field(repr=False)
    client_token: str = field(default="", repr=False)
    behaviour: str = "healthy"
    phone: str = "5511987650000"
    webhook_url: str = ""
    pairing_code: str = ""
    sends: list[JSONDict] = field(default_factory=list)
    statuses: dict[str, list[str]] = field(default_factory=dict)  # message id → statuses reached
    configured: dict[str, str] = field(default_factory=dict)  # webhook kind → URL (by API)


def zapi_webhook(instance: DialectInstance, kind: str, **kw: Any) -> JSONDict:
    now = int(time.time() * 1000)
    base: JSONDict = {"instanceId": instance.instance_id, "momment": now}
    if kind == "connected":
        return base | {"type": "ConnectedCallback", "connected": True, "phone": kw.get("phone", instance.phone)}
    if kind == "connected_without_phone":
        return base | {"type": "ConnectedCallback", "connected": True}
    if kind == "disconnected":
        return base | {"type": "DisconnectedCallback", "disconnected": True, "error": "Device has been disconnected"}
    if kind == "delivery":
        return base | {
            "type": "DeliveryCallback",
            "phone": kw.get("to", ""),
            "messageId": kw["message_id"],
            "zaapId": "Z" + kw["message_id"],
        }
    if kind == "send_failed":
        return base | {
            "type": "DeliveryCallback",
            "phone": kw.get("to", ""),
            "messageId": kw["message_id"],
            "zaapId": "Z" + kw["message_id"],
            "error": kw.get("error", "Phone number does not exist"),
        }
    if kind in ("received", "received_waiting"):
        # A customer's message; `received_waiting`: one the phone could not decrypt ("Aguardando
        # mensagem"): Z-API posts it with `waitingMessage: true` and no content.
        waiting = kind == "received_waiting"
        body = base | {
            "type": "ReceivedCallback",
            "messageId": kw.get("message_id", f"3EB0IN{int(time.time() * 1e6):X}"),
            "phone": kw.get("to", "5515981121710"),
            "connectedPhone": instance.phone,
            "fromMe": False,
            "waitingMessage": waiting,
            "isGroup": False,
            "status": "RECEIVED",
        }
        return body if waiting else body | {"text": {"message": kw.get("text", "Oi")}}
    if kind == "status":
        return base | {
            "type": "MessageStatusCallback",
            "status": kw.get("status", "RECEIVED"),
            "ids": list(kw["message_ids"]),
            "phone": kw.get("to", ""),
            "phoneDevice": 0,
            "isGroup": False,
        }
    raise ValueError(f"unknown Z-API webhook kind {kind}")


def evolution_webhook(instance: DialectInstance, kind: str, **kw: Any) -> JSONDict:
    name = instance.instance_id
    envelope: JSONDict = {
        "instance": name,
        "destination": instance.webhook_url,
        "date_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "sender": f"{instance.phone}@s.whatsapp.net",
        "server_url": "http://127.0.0.1",
        "apikey": instance.token,  # Evolution really does send it; the bridge must drop it
    }
    if kind == "connected":
        data = {
            "instance": name,
            "wuid": f"{kw.get('phone', instance.phone)}@s.whatsapp.net",
            "state": "open",
            "statusReason": 200,
        }
        return envelope | {"event": "connection.update", "data": data}
    if kind == "connected_without_phone":
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "open", "statusReason": 200},
        }
    if kind == "disconnected":
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "close", "statusReason": 428},
        }
    if kind == "logged_out_close":  # v2.3: `close` is posted only when it will not reconnect
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "close", "statusReason": kw.get("code", 401)},
        }
    if kind == "qr_refused":
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "refused", "statusReason": 428},
        }
    if kind == "logged_out":
        data = {"instance": name, "status": "closed", "disconnectionReasonCode": 401, "disconnectionObject": "{}"}
        return envelope | {"event": "status.instance", "data": data}
    if kind == "status":
        (mid,) = kw["message_ids"]
        data = {
            "keyId": mid,
            "remoteJid": kw.get("remote_jid") or f"{kw.get('to', '')}@s.whatsapp.net",
            "fromMe": kw.get("from_me", True),  # False: a receipt of a message the instance received
            "participant": None,
            "status": kw.get("status", "DELIVERY_ACK"),
            "instanceId": "6f63" + name,
            "messageId": "row-" + mid,
        }
        return envelope | {"event": "messages.update", "data": data}
    raise ValueError(f"unknown Evolution webhook kind {kind}")
