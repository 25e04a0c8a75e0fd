"""Evolution API v2's webhook bodies → the domain's events, once, here.

Envelope: {"event": "messages.update" | "MESSAGES_UPDATE" | …, "instance": "<name>", "data": {…},
"date_time", "sender", "server_url", "apikey"} (evolution-api src/api/integrations/event/webhook).
The `apikey` in the envelope is a secret: it is never copied into an event.
- connection.update: `state` open (with `wuid` = the owner), connecting, close, refused (QR limit);
  v2.3 posts `close` only when it will not reconnect, with the code as `statusReason`
  (401/402/403/406 = logged out; whatsapp.baileys.service.ts connectionUpdate);
- status.instance: `status` closed with `disconnectionReasonCode` (401/402/403/406 = logged out);
- messages.update: `keyId` + `status` SERVER_ACK/DELIVERY_ACK/READ/PLAYED/ERROR (no timestamp);
  `fromMe: false` is a receipt of a message the instance *received* (read on the phone), never
  a status of one of our sends;
- messages.upsert: inbound (`key.fromMe` false) or sent from the phone; send.message: our own send
  echoed (PENDING: not an ack).
"""

from __future__ import annotations

import json
from typing import Any, Final

from adapters.inbound import normalize_evolution
from adapters.wapi.webhooks import inbound_record
from adapters.webhook_common import as_dict, body_key, digest, instance_id, load, message_id, moment, status_key, text
from statemachine.domain import Reason
from statemachine.events import EventReason, ProviderEvent, Route
from statemachine.phone import e164_phone
from statemachine.providers import EVOLUTION_IGNORED_STATUS, EVOLUTION_STATUS, evolution_logged_out

NAME: Final = "evolution"


def split(raw: bytes) -> list[bytes]:
    """Evolution posts one event per body. Its envelope carries the instance's `apikey`: the body
    is stored (and may reach the event feed) without it."""
    body, _bad = load(raw)
    if isinstance(body, dict) and "apikey" in body:
        return [json.dumps({k: v for k, v in body.items() if k != "apikey"}, separators=(",", ":")).encode()]
    return [raw]


def _event_name(value: Any) -> str | None:
    name = text(value, 64)
    return name.lower().replace("_", ".") if name else None


def parse(raw: bytes) -> ProviderEvent:
    """Never raises: a body it cannot use is an UNROUTABLE event with a reason."""
    body, bad = load(raw)
    if bad is not None:
        return ProviderEvent(Route.UNROUTABLE, EventReason.MALFORMED_JSON, digest(raw))
    if not isinstance(body, dict):
        return ProviderEvent(Route.UNROUTABLE, EventReason.NOT_AN_OBJECT, body_key(body))
    # The key never includes the envelope's apikey or its emit time: a re-post is the same event.
    data = as_dict(body.get("data"))
    key = body_key({"event": body.get("event"), "instance": body.get("instance"), "data": data})
    name = _event_name(body.get("event"))
    iid = instance_id(body.get("instance") or data.get("instance"))
    if name is None:
        return ProviderEvent(Route.UNROUTABLE, EventReason.NO_EVENT_KEY, key, iid)
    if name not in _KNOWN:
        return ProviderEvent(Route.UNROUTABLE, f"{EventReason.UNKNOWN_EVENT}:{name}", key, iid)
    if iid is None:
        return ProviderEvent(Route.UNROUTABLE, EventReason.MISSING_INSTANCE_ID, key, None)
    if name == "connection.update":
        return _connection(data, iid, key)
    if name == "status.instance":
        closed = str(data.get("status", "")).lower() in ("closed", "close")
        if not closed:
            return ProviderEvent(Route.PRESENCE, EventReason.RECORDED, key, iid)
        logged_out = evolution_logged_out(data.get("disconnectionReasonCode"))
        return ProviderEvent(
            Route.DISCONNECTION,
            EventReason.RECORDED,
            key,
            iid,
            connected=False,
            failure_reason=Reason.LOGGED_OUT.value if logged_out else "",
        )
    if name == "logout.instance":
        return ProviderEvent(
            Route.DISCONNECTION, EventReason.RECORDED, key, iid, connected=False, failure_reason=Reason.LOGGED_OUT.value
        )
    if name == "messages.update":
        return _status(data, iid, key)
    if name == "messages.upsert":
        msg_key = as_dict(data.get("key"))
        mid = message_id(msg_key.get("id"))
        from_me = msg_key.get("fromMe") is True
        return ProviderEvent(
            Route.DELIVERY if from_me else Route.RECEIVED,
            EventReason.RECORDED,
            f"received:{NAME}:{iid}:{mid}" if mid else key,
            iid,
            provider_message_id=mid,
            chat_id=text(msg_key.get("remoteJid"), 128),
            moment=moment(data.get("messageTimestamp")),
            from_api=False,
            inbound=inbound_record(normalize_evolution(body)),
        )
    # send.message (our own send echoed, PENDING), qrcode.updated, presence: kept, not applied.
    return ProviderEvent(Route.PRESENCE, EventReason.RECORDED, key, iid)


def _connection(data: dict[str, Any], iid: str, key: str) -> ProviderEvent:
    state = str(data.get("state", "")).lower()
    if state == "open":
        # Connected only with an owner: `wuid`. Without one the machine says SESSION_INCOMPLETE.
        return ProviderEvent(
            Route.CONNECTION, EventReason.RECORDED, key, iid, connected=True, phone=e164_phone(data.get("wuid"))
        )
    if state == "refused":
        return ProviderEvent(
            Route.DISCONNECTION, EventReason.RECORDED, key, iid, connected=False, failure_reason=Reason.QR_REFUSED.value
        )
    if state in ("close", "connecting"):
        logged_out = state == "close" and evolution_logged_out(data.get("statusReason"))
        return ProviderEvent(
            Route.DISCONNECTION,
            EventReason.RECORDED,
            key,
            iid,
            connected=False,
            failure_reason=Reason.LOGGED_OUT.value if logged_out else "",
        )
    return ProviderEvent(Route.UNROUTABLE, EventReason.UNKNOWN_STATUS, key, iid, raw_status=text(state, 32))


def _status(data: dict[str, Any], iid: str, key: str) -> ProviderEvent:
    msg_key = as_dict(data.get("key"))
    mid = message_id(data.get("keyId")) or message_id(msg_key.get("id"))
    raw = text(data.get("status"), 32)
    from_me = data.get("fromMe", msg_key.get("fromMe"))
    if from_me is False or (raw is not None and raw.upper() in EVOLUTION_IGNORED_STATUS):
        # Kept, not applied: a received message's receipt must not count as a delivery of ours
        # (it would park forever, and the stall rule would read it as a delivery).
        return ProviderEvent(Route.PRESENCE, EventReason.RECORDED, key, iid, provider_message_id=mid, raw_status=raw)
    if mid is None:
        return ProviderEvent(Route.MESSAGE_STATUS, EventReason.MISSING_MESSAGE_ID, key, iid)
    status = EVOLUTION_STATUS.get(raw.upper()) if raw else None
    if status is None:
        return ProviderEvent(
            Route.MESSAGE_STATUS, EventReason.UNKNOWN_STATUS, key, iid, provider_message_id=mid, raw_status=raw
        )
    failed = raw is not None and raw.upper() == "ERROR"
    return ProviderEvent(
        Route.MESSAGE_STATUS,
        EventReason.RECORDED,
        status_key(NAME, iid, mid, status),
        iid,
        provider_message_id=mid,
        status=status,
        raw_status=raw,
        failure_reason=Reason.PROVIDER_ERROR.value if failed else "",
        failure_detail="Evolution reported status ERROR (no reason given)" if failed else "",
    )


_KNOWN: Final = frozenset(
    {
        "connection.update",
        "status.instance",
        "logout.instance",
        "remove.instance",
        "messages.update",
        "messages.upsert",
        "send.message",
        "qrcode.updated",
        "presence.update",
        "messages.set",
        "chats.update",
        "chats.upsert",
        "contacts.update",
        "contacts.upsert",
    }
)
