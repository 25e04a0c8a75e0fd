"""The simulator's recovery side: pairing codes, restarts and W-API's webhook log. Pure state and
answer bodies (no I/O); the app wires them to routes. Shapes follow docs/wapi-recovery.md; those
marked **(guess)** only need to be plausible.
"""

from __future__ import annotations

import itertools
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import Any, Final

from adapters.simulator.payloads import JSONDict, error_body

WEBHOOK_KINDS: Final = ("connected", "disconnected", "delivery", "received", "message-status", "chat-presence")
# fetch-instance field per kind (only `webhookReceivedUrl` is seen in client code; the rest guessed).
FETCH_INSTANCE_FIELDS: Final = {
    "connected": "webhookConnectedUrl",
    "disconnected": "webhookDisconnectedUrl",
    "delivery": "webhookDeliveryUrl",
    "received": "webhookReceivedUrl",
    "message-status": "webhookStatusUrl",
    "chat-presence": "webhookPresenceUrl",
}
WEBHOOK_LOG_KEEP: Final = 10_000  # per instance, oldest dropped first (W-API keeps 30 days)
DEFAULT_PER_PAGE: Final = 20
MAX_PER_PAGE: Final = 100
PAIRING_ALPHABET: Final = string.ascii_uppercase + string.digits
_DIGITS = re.compile(r"^\d{10,15}$")
_log_ids = itertools.count(1)


@dataclass(slots=True)
class PendingPairing:
    code: str
    phone: str
    issued_at: float


@dataclass(slots=True)
class RecoveryState:
    """Per-instance recovery state of the simulator."""

    pairing: PendingPairing | None = None
    log: list[JSONDict] = field(default_factory=list)  # oldest first
    restarts: int = 0
    qr_png: bytes = b""
    pairing_requests: int = 0


def new_pairing_code() -> str:
    """Eight characters as WhatsApp shows them, e.g. 'K7Q2-M9XD' (guess: W-API's own format)."""
    raw = "".join(secrets.choice(PAIRING_ALPHABET) for _ in range(8))
    return f"{raw[:4]}-{raw[4:]}"


def pairing_phone(query: dict[str, str] | Any) -> str | None:
    """`phoneNumber` (one client sends `phone`): digits only, country + area + number."""
    value = query.get("phoneNumber") or query.get("phone") or ""
    return value if _DIGITS.match(value) else None


def qr_png(instance_id: str) -> bytes:
    """A real, scannable QR code PNG (what WhatsApp's linking QR looks like to a client)."""
    import io

    import segno

    payload = f"2@{secrets.token_urlsafe(24)},{instance_id},{int(time.time())}"
    buffer = io.BytesIO()
    segno.make(payload, error="l", micro=False).save(buffer, kind="png", scale=4, border=4)
    return buffer.getvalue()


def qr_answer(png: bytes) -> JSONDict:
    """`image=disable`: the same image as a data URL (inferred key `qrcode`)."""
    import base64

    return {"connected": False, "qrcode": "data:image/png;base64," + base64.b64encode(png).decode()}


def pairing_answer(code: str) -> JSONDict:
    return {"error": False, "pairingCode": code}


def already_connected_answer(phone: str) -> JSONDict:
    return {"error": False, "connected": True, "phone": phone, "message": "Instância já conectada"}


def restart_answer() -> JSONDict:
    return {"error": False, "message": "Instância reiniciada com sucesso!"}


def disconnect_answer() -> JSONDict:
    return {"error": False, "message": "Deslogado com sucesso!"}


def webhook_url_of(body: Any) -> str | None:
    """An update-webhook body: `value` (most clients), `urlWebhook` (the Postman summary) or `url`."""
    if not isinstance(body, dict):
        return None
    for key in ("value", "urlWebhook", "url"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def fetch_instance_webhooks(urls: dict[str, str]) -> JSONDict:
    return {field_name: urls.get(kind, "") for kind, field_name in FETCH_INSTANCE_FIELDS.items()}


def record_log(state: RecoveryState, url: str, body: JSONDict) -> JSONDict:
    """W-API logs every webhook it posts, delivered or not."""
    entry: JSONDict = {
        "id": str(next(_log_ids)),
        "createdAt": int(time.time()),
        "event": str(body.get("event", "")),
        "url": url,
        "body": body,
        "statusCode": None,
    }
    state.log.append(entry)
    if len(state.log) > WEBHOOK_LOG_KEEP:
        del state.log[: len(state.log) - WEBHOOK_LOG_KEEP]
    return entry


def logs_page(state: RecoveryState, query: dict[str, str] | Any) -> tuple[JSONDict, int]:
    """`fetch-webhook-logs?perPage=&page=`: newest first, 1-based pages (guess)."""
    try:
        page = int(query.get("page") or 1)
        per_page = int(query.get("perPage") or DEFAULT_PER_PAGE)
    except ValueError:
        return error_body("page and perPage must be numbers"), 400
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        return error_body(f"page >= 1 and 1 <= perPage <= {MAX_PER_PAGE}"), 400
    newest_first = state.log[::-1]
    total = len(newest_first)
    start = (page - 1) * per_page
    items = newest_first[start : start + per_page]
    pages = max(1, -(-total // per_page))
    return {"error": False, "page": page, "perPage": per_page, "total": total, "totalPages": pages, "logs": items}, 200


def log_entry(state: RecoveryState, log_id: str) -> tuple[JSONDict, int]:
    for entry in state.log:
        if entry["id"] == log_id:
            return {"error": False, "log": entry}, 200
    return error_body("log não encontrado"), 404
