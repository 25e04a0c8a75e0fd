"""W-API's wire contract: endpoints, request bodies and answer parsers. Pure: no I/O.

Everything here follows docs/wapi-contract.md and docs/wapi-recovery.md. Facts that come from client
code rather than W-API's own reference are marked **(inferred)**; they live in the small tables below
so they are easy to correct when W-API's real answer is known.

The parsers report what the provider *claims*. They never judge it: "connected without a phone" is
returned as ``ProbeOutcome(connected=True, phone=None)`` and the instance machine decides what it means.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# --- endpoints -----------------------------------------------------------------------------------
from adapters.wapi.send_body import (
    DELAY_FIELD,
    PHONE_FIELD,
    REPLY_TO_FIELD,
    SEND_TABLE,
    ContentMismatchError,
    SendSpec,
    build_send_body,
    coordinate_text,
    extension_from_file_name,
)
from statemachine.domain import (
    ProbeOutcome,
    Reason,
)
from statemachine.phone import e164_phone

DEFAULT_BASE_URL: Final = "https://api.w-api.app/v1"
STATUS_ENDPOINT: Final = "/instance/status-instance"
INSTANCE_QUERY_PARAM: Final = "instanceId"


# Keys of a send answer that may carry the provider's message id, in the order they are trusted
# (inferred, client code). ("data", "x") means body["data"]["x"].
MESSAGE_ID_PATHS: Final[tuple[tuple[str, ...], ...]] = (
    ("messageId",),
    ("id",),
    ("data", "messageId"),
    ("data", "id"),
)
# A queue handle is NOT a message id: an answer carrying only this is a queued message, not a sent
# one (W-API's send queue; its delivery webhook later names the real id). (inferred)
QUEUE_ID_PATHS: Final[tuple[tuple[str, ...], ...]] = (("insertedId",), ("data", "insertedId"))

# Status-answer spellings (all inferred from client code, docs/wapi-contract.md, "Instance status").
PHONE_KEYS: Final = ("phone", "phoneNumber", "connectedPhone")
LID_KEYS: Final = ("lid", "connectedLid")
QR_KEYS: Final = ("qrcode", "qrCode", "qr", "base64")
STATE_KEYS: Final = ("state", "status", "connectionState")
STATE_CONNECTED: Final = frozenset({"open", "connected"})
STATE_DISCONNECTED: Final = frozenset({"close", "closed", "disconnected"})

DETAIL_MAX: Final = 200


# --- answer parsers ------------------------------------------------------------------------------


def extract_message_id(body: Any) -> str | None:
    """The provider's message id from a send answer, or None. Never invents one."""
    return _first_path(body, MESSAGE_ID_PATHS)


def extract_queue_id(body: Any) -> str | None:
    """W-API's queue handle (`insertedId`) of a send answer, or None."""
    return _first_path(body, QUEUE_ID_PATHS)


def _first_path(body: Any, paths: tuple[tuple[str, ...], ...]) -> str | None:
    if not isinstance(body, Mapping):
        return None
    for path in paths:
        node: Any = body
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        text = _id_text(node)
        if text:
            return text
    return None


def _id_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def is_error_body(body: Any) -> bool:
    """W-API's in-band error: ``error: true`` or a non-empty ``error`` string (also under ``data``)."""
    for node in _nodes(body):
        flag = node.get("error")
        if flag is True or (isinstance(flag, str) and flag.strip() and flag.strip().lower() != "false"):
            return True
    return False


def error_message(body: Any) -> str:
    """Best human text of an error answer: ``message``, then an ``error`` string."""
    for node in _nodes(body):
        for key in ("message", "error", "msg", "detail"):
            value = node.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return ""


def parse_status(body: Any) -> ProbeOutcome:
    """Turn a 2xx JSON status answer into what W-API claims about the session.

    Precedence: a non-empty QR field (waiting for a scan) > explicit ``connected`` > ``state`` /
    ``status`` / ``connectionState`` > an identity (``me.id``, ``wid``) alone. Keys are read at top
    level first, then under ``data``. An answer matching no spelling is reported as gateway trouble
    (``connected=None``), so an unknown shape never flips an instance to disconnected.
    """
    nodes = _nodes(body)
    if not nodes:
        return ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail="status answer is not an object")

    phone = _find_phone(nodes)
    lid = _find_lid(nodes)

    if any(_non_empty_str(node.get(key)) for node in nodes for key in QR_KEYS):
        return ProbeOutcome(connected=False, phone=phone, lid=lid, detail="waiting for QR scan")

    connected = _first(_bool_value(node.get("connected")) for node in nodes)
    if connected is None:
        connected = _first(_state_value(node.get(key)) for node in nodes for key in STATE_KEYS)
    if connected is None and _identity_phone(nodes) is not None:
        connected = True  # `me: {id}` / `wid: {user}` is only present on a paired session
    if connected is None:
        if is_error_body(body):
            detail = truncate(error_message(body) or "status answer flagged an error")
        else:
            detail = "unrecognised status answer"
        return ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail=detail)
    return ProbeOutcome(connected=connected, phone=phone, lid=lid)


def _nodes(body: Any) -> list[Mapping[str, Any]]:
    if not isinstance(body, Mapping):
        return []
    nodes: list[Mapping[str, Any]] = [body]
    data = body.get("data")
    if isinstance(data, Mapping):
        nodes.append(data)
    return nodes


def _first(values: Any) -> bool | None:
    for value in values:
        if value is not None:
            return bool(value)
    return None


def _bool_value(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    return None


def _state_value(value: Any) -> bool | None:
    if not isinstance(value, str):
        return None
    word = value.strip().lower()
    if word in STATE_CONNECTED:
        return True
    if word in STATE_DISCONNECTED:
        return False
    return None


def _non_empty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def jid_to_phone(value: Any) -> str | None:
    """'5511999990000:12@s.whatsapp.net' -> '5511999990000'; None unless the project's phone rule holds."""
    return e164_phone(value)


def _identity_phone(nodes: list[Mapping[str, Any]]) -> str | None:
    for node in nodes:
        me = node.get("me")
        if isinstance(me, Mapping):
            phone = jid_to_phone(me.get("id")) or jid_to_phone(me.get("user"))
        else:
            phone = jid_to_phone(me)
        if phone:
            return phone
        wid = node.get("wid")
        if isinstance(wid, Mapping):
            phone = jid_to_phone(wid.get("user")) or jid_to_phone(wid.get("_serialized"))
        else:
            phone = jid_to_phone(wid)
        if phone:
            return phone
    return None


def _find_phone(nodes: list[Mapping[str, Any]]) -> str | None:
    for node in nodes:
        for key in PHONE_KEYS:
            phone = jid_to_phone(node.get(key))
            if phone:
                return phone
    return _identity_phone(nodes)


def _find_lid(nodes: list[Mapping[str, Any]]) -> str | None:
    for node in nodes:
        for key in LID_KEYS:
            value = node.get(key)
            if _non_empty_str(value):
                return str(value).strip()
        me = node.get("me")
        if isinstance(me, Mapping) and _non_empty_str(me.get("lid")):
            return str(me["lid"]).strip()
    return None


def truncate(text: str, limit: int = DETAIL_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- recovery, webhook configuration and webhook logs (docs/wapi-recovery.md; all inferred) --------


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """One recovery endpoint: method, path and how its query names the values it needs."""

    method: str
    endpoint: str
    query: Mapping[str, str]  # our name -> W-API query key
    fixed: Mapping[str, str]  # always sent


# THE recovery table. Correct W-API facts here. Every GET except the webhook updates (PUT).
ACTION_TABLE: Final[Mapping[str, ActionSpec]] = {
    "qr_code": ActionSpec("GET", "/instance/qr-code", {}, {"image": "disable"}),
    "qr_code_image": ActionSpec("GET", "/instance/qr-code", {}, {"image": "enable"}),
    "pairing_code": ActionSpec("GET", "/instance/pairing-code", {"phone": "phoneNumber"}, {}),
    "restart": ActionSpec("GET", "/instance/restart", {}, {}),
    "disconnect": ActionSpec("GET", "/instance/disconnect", {}, {}),
    "fetch_instance": ActionSpec("GET", "/instance/fetch-instance", {}, {}),
    "webhook_logs": ActionSpec("GET", "/webhook/fetch-webhook-logs", {"page": "page", "per_page": "perPage"}, {}),
}

# The six webhook kinds W-API posts, each set with PUT /webhook/update-webhook-<kind>.
WEBHOOK_KINDS: Final = ("connected", "disconnected", "delivery", "received", "message-status", "chat-presence")
WEBHOOK_UPDATE_ENDPOINT: Final = "/webhook/update-webhook-{kind}"
# Body of an update: independent clients send `value`, the Postman summary says `urlWebhook`;
# both are sent so either reading works (one client's `url` is accepted by the simulator only).
WEBHOOK_BODY_KEYS: Final = ("value", "urlWebhook")
# fetch-instance fields that may carry a configured URL, per kind (only the received one is seen).
WEBHOOK_URL_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "connected": ("webhookConnectedUrl",),
    "disconnected": ("webhookDisconnectedUrl",),
    "delivery": ("webhookDeliveryUrl",),
    "received": ("webhookReceivedUrl",),
    "message-status": ("webhookStatusUrl", "webhookMessageStatusUrl"),
    "chat-presence": ("webhookPresenceUrl", "webhookChatPresenceUrl"),
}
PAIRING_CODE_KEYS: Final = ("pairingCode", "code", "pairing_code")
WEBHOOK_LOG_LIST_KEYS: Final = ("logs", "data", "items", "results")
WEBHOOK_LOG_BODY_KEYS: Final = ("body", "payload", "content", "data", "request")
WEBHOOK_LOG_ID_KEYS: Final = ("id", "_id", "logId")
WEBHOOK_LOG_PAGES_KEYS: Final = ("totalPages", "lastPage", "pages")


def webhook_body(url: str) -> dict[str, str]:
    return dict.fromkeys(WEBHOOK_BODY_KEYS, url)


def qr_text(body: Any) -> str | None:
    """The QR code's text form (data URL or bare base64) from a qr-code answer."""
    for node in _nodes(body):
        for key in QR_KEYS:
            value = node.get(key)
            if _non_empty_str(value):
                return str(value).strip()
    return None


def pairing_code(body: Any) -> str | None:
    for node in _nodes(body):
        for key in PAIRING_CODE_KEYS:
            value = node.get(key)
            if _non_empty_str(value):
                return str(value).strip()
    return None


def already_connected(body: Any) -> tuple[bool, str | None]:
    """(connected, phone) as a qr-code / pairing-code answer claims it for a paired instance."""
    nodes = _nodes(body)
    connected = _first(_bool_value(node.get("connected")) for node in nodes)
    return bool(connected), _find_phone(nodes)


def configured_webhook_urls(body: Any) -> dict[str, str]:
    """kind -> URL W-API says is configured, for the kinds its fetch-instance answer names."""
    found: dict[str, str] = {}
    for node in _nodes(body):
        for kind, keys in WEBHOOK_URL_FIELDS.items():
            for key in keys:
                value = node.get(key)
                if _non_empty_str(value) and kind not in found:
                    found[kind] = str(value).strip()
    return found


@dataclass(frozen=True, slots=True)
class WebhookLogEntry:
    """One posted webhook as W-API's log keeps it: the body it posted, raw."""

    log_id: str
    payload: bytes


def parse_webhook_logs(body: Any) -> tuple[list[WebhookLogEntry], int | None]:
    """(entries, total pages if the answer says). A log entry's body may be an object or a JSON
    string; entries without a usable body are skipped (they cannot be replayed)."""
    items: Any = body if isinstance(body, list) else None
    pages: int | None = None
    for node in _nodes(body):
        if items is None:
            for key in WEBHOOK_LOG_LIST_KEYS:
                if isinstance(node.get(key), list):
                    items = node[key]
                    break
        for key in WEBHOOK_LOG_PAGES_KEYS:
            value = node.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and pages is None:
                pages = value
    entries: list[WebhookLogEntry] = []
    for item in items or []:
        if not isinstance(item, Mapping):
            continue
        log_id = next((str(item[k]) for k in WEBHOOK_LOG_ID_KEYS if _id_text(item.get(k))), "")
        payload: bytes | None = None
        for key in WEBHOOK_LOG_BODY_KEYS:
            value = item.get(key)
            if isinstance(value, Mapping):
                payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
                break
            if isinstance(value, str) and value.strip().startswith("{"):
                payload = value.strip().encode()
                break
        if payload is None and "event" in item and "instanceId" in item:
            payload = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()  # a bare body
        if payload is not None:
            entries.append(WebhookLogEntry(log_id, payload))
    return entries, pages


__all__ = [
    "ACTION_TABLE",
    "DEFAULT_BASE_URL",
    "DELAY_FIELD",
    "DETAIL_MAX",
    "INSTANCE_QUERY_PARAM",
    "LID_KEYS",
    "MESSAGE_ID_PATHS",
    "PAIRING_CODE_KEYS",
    "PHONE_FIELD",
    "PHONE_KEYS",
    "QR_KEYS",
    "QUEUE_ID_PATHS",
    "REPLY_TO_FIELD",
    "SEND_TABLE",
    "STATE_CONNECTED",
    "STATE_DISCONNECTED",
    "STATE_KEYS",
    "STATUS_ENDPOINT",
    "WEBHOOK_BODY_KEYS",
    "WEBHOOK_KINDS",
    "WEBHOOK_LOG_BODY_KEYS",
    "WEBHOOK_LOG_ID_KEYS",
    "WEBHOOK_LOG_LIST_KEYS",
    "WEBHOOK_LOG_PAGES_KEYS",
    "WEBHOOK_UPDATE_ENDPOINT",
    "WEBHOOK_URL_FIELDS",
    "ActionSpec",
    "ContentMismatchError",
    "SendSpec",
    "WebhookLogEntry",
    "already_connected",
    "build_send_body",
    "configured_webhook_urls",
    "coordinate_text",
    "error_message",
    "extension_from_file_name",
    "extract_message_id",
    "extract_queue_id",
    "is_error_body",
    "jid_to_phone",
    "pairing_code",
    "parse_status",
    "parse_webhook_logs",
    "qr_text",
    "truncate",
    "webhook_body",
]
