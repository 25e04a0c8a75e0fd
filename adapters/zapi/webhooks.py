"""Z-API's webhook bodies → the domain's events (statemachine/events.py), once, here.

Kinds (developer.z-api.io, webhooks/*): ConnectedCallback, DisconnectedCallback, DeliveryCallback
(the send webhook: no `error` = the server took it; `error` = failed, with Z-API's words),
MessageStatusCallback (`status` SENT/RECEIVED/READ/PLAYED/READ_BY_ME for every id in `ids[]`),
ReceivedCallback (inbound; `fromMe` = sent from the phone; `waitingMessage: true` = the phone could
not decrypt it, "Waiting for this message": a broken session, the event's failure_reason
WAITING_FOR_MESSAGE), PresenceChatCallback.
"""

from __future__ import annotations

import json
from typing import Any, Final

from adapters.inbound import normalize_zapi
from adapters.wapi.webhooks import inbound_record
from adapters.webhook_common import body_key, digest, instance_id, load, message_id, moment, status_key, text
from statemachine.domain import MessageState, Reason
from statemachine.events import EventReason, ProviderEvent, Route
from statemachine.phone import e164_phone
from statemachine.providers import ZAPI_IGNORED_STATUS, ZAPI_STATUS, normalize_failure

NAME: Final = "zapi"
MAX_IDS: Final = 500  # ids per status body; more is not a body Z-API sends


def split(raw: bytes) -> list[bytes]:
    """A MessageStatusCallback names several messages in `ids[]`: one body per id (each then
    deduplicated and applied on its own). Anything else is one body, as posted."""
    body, _bad = load(raw)
    if not isinstance(body, dict) or body.get("type") != "MessageStatusCallback":
        return [raw]
    ids = body.get("ids")
    if not isinstance(ids, list) or len(ids) <= 1:
        return [raw]
    return [json.dumps({**body, "ids": [one]}, separators=(",", ":")).encode() for one in ids[:MAX_IDS]]


def parse(raw: bytes) -> ProviderEvent:
    """Never raises: a body it cannot use is an UNROUTABLE event with a reason."""
    body, bad = load(raw)
    if bad is not None:
        return ProviderEvent(Route.UNROUTABLE, EventReason.MALFORMED_JSON, digest(raw))
    if not isinstance(body, dict):
        return ProviderEvent(Route.UNROUTABLE, EventReason.NOT_AN_OBJECT, body_key(body))
    kind = text(body.get("type"), 64)
    iid = instance_id(body.get("instanceId"))
    at = moment(body.get("momment", body.get("moment")))
    key = body_key(body)
    if kind is None:
        return ProviderEvent(Route.UNROUTABLE, EventReason.NO_EVENT_KEY, key, iid)
    route = _ROUTES.get(kind)
    if route is None:
        return ProviderEvent(Route.UNROUTABLE, f"{EventReason.UNKNOWN_EVENT}:{kind}", key, iid)
    if iid is None:
        return ProviderEvent(route, EventReason.MISSING_INSTANCE_ID, key, None, moment=at)
    if route is Route.CONNECTION:
        # Connected only with a phone: without one the instance machine says SESSION_INCOMPLETE.
        return ProviderEvent(
            route,
            EventReason.RECORDED,
            key,
            iid,
            connected=body.get("connected") is not False,
            phone=e164_phone(body.get("phone")),
            moment=at,
        )
    if route is Route.DISCONNECTION:
        return ProviderEvent(route, EventReason.RECORDED, key, iid, connected=False, moment=at)
    if kind == "DeliveryCallback":
        return _delivery(body, iid, at, key)
    if kind == "MessageStatusCallback":
        return _status(body, iid, at, key)
    if route is Route.RECEIVED:
        mid = message_id(body.get("messageId"))
        from_me = body.get("fromMe") is True
        waiting = not from_me and body.get("waitingMessage") is True
        return ProviderEvent(
            Route.DELIVERY if from_me else Route.RECEIVED,
            EventReason.RECORDED,
            f"received:{NAME}:{iid}:{mid}" if mid else key,
            iid,
            provider_message_id=mid,
            phone=e164_phone(body.get("connectedPhone")),
            chat_id=text(body.get("phone"), 128),
            moment=at,
            from_api=False,
            failure_reason=Reason.WAITING_FOR_MESSAGE.value if waiting else "",
            inbound=inbound_record(normalize_zapi(body)),
        )
    return ProviderEvent(route, EventReason.RECORDED, key, iid, moment=at)


def _delivery(body: dict[str, Any], iid: str, at: Any, key: str) -> ProviderEvent:
    """The send webhook: without `error` the server took it (SENT, an ack); with it, FAILED."""
    mid = message_id(body.get("messageId"))
    if mid is None:
        return ProviderEvent(Route.MESSAGE_STATUS, EventReason.MISSING_MESSAGE_ID, key, iid, moment=at)
    error = body.get("error")
    if isinstance(error, str) and error:
        code = body.get("errorCode")
        return ProviderEvent(
            Route.MESSAGE_STATUS,
            EventReason.RECORDED,
            status_key(NAME, iid, mid, MessageState.FAILED),
            iid,
            provider_message_id=mid,
            status=MessageState.FAILED,
            raw_status="ERROR",
            moment=at,
            failure_reason=normalize_failure(error, code if isinstance(code, str) else None).value,
            failure_detail=error[:500],
        )
    return ProviderEvent(
        Route.MESSAGE_STATUS,
        EventReason.RECORDED,
        status_key(NAME, iid, mid, MessageState.SENT),
        iid,
        provider_message_id=mid,
        status=MessageState.SENT,
        raw_status="DELIVERY_CALLBACK",
        moment=at,
    )


def _status(body: dict[str, Any], iid: str, at: Any, key: str) -> ProviderEvent:
    ids = body.get("ids")
    mid = message_id(ids[0]) if isinstance(ids, list) and len(ids) == 1 else message_id(body.get("messageId"))
    raw = text(body.get("status"), 32)
    if raw is not None and raw.upper() in ZAPI_IGNORED_STATUS:
        # READ_BY_ME: this instance read an inbound message; nothing about our sends. Kept, not applied.
        return ProviderEvent(Route.PRESENCE, EventReason.RECORDED, key, iid, raw_status=raw, moment=at)
    if mid is None:
        return ProviderEvent(Route.MESSAGE_STATUS, EventReason.MISSING_MESSAGE_ID, key, iid, moment=at)
    status = ZAPI_STATUS.get(raw.upper()) if raw else None
    if status is None:
        return ProviderEvent(
            Route.MESSAGE_STATUS,
            EventReason.UNKNOWN_STATUS,
            key,
            iid,
            provider_message_id=mid,
            raw_status=raw,
            moment=at,
        )
    return ProviderEvent(
        Route.MESSAGE_STATUS,
        EventReason.RECORDED,
        status_key(NAME, iid, mid, status),
        iid,
        provider_message_id=mid,
        status=status,
        raw_status=raw,
        moment=at,
    )


_ROUTES: Final = {
    "ConnectedCallback": Route.CONNECTION,
    "DisconnectedCallback": Route.DISCONNECTION,
    "DeliveryCallback": Route.MESSAGE_STATUS,
    "MessageStatusCallback": Route.MESSAGE_STATUS,
    "ReceivedCallback": Route.RECEIVED,
    "PresenceChatCallback": Route.PRESENCE,
}
