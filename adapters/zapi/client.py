"""Z-API over HTTP: one implementation of the provider port family (statemachine/ports.py).

- Base: `<base>/instances/<instance id>/token/<instance token>/<method>`; the token is in the PATH,
  so no URL ever leaves this module (details are scrubbed, calls are not traced by URL).
- `Client-Token` header (the account security token) on every call when configured.
- Session truth: `GET /status` (no identity) plus `GET /device` (the phone), judged by
  statemachine/providers.py `zapi_session`.
- A 200 on a send only means "queued" (Z-API holds up to 1,000 sends while the phone is offline):
  the answer is stored QUEUED with the WhatsApp id (`messageId`) and Z-API's queue handle
  (`zaapId`) until the send webhook or a SENT status acks it.
"""

from __future__ import annotations

from typing import Any, Final

from adapters.provider_http import Answer, JsonHttp, error_text, png_of_data_url, scrub
from statemachine.domain import (
    ActionOutcome,
    Contact,
    Credentials,
    Document,
    Location,
    Media,
    MessageKind,
    OutboundMessage,
    ProbeOutcome,
    Reaction,
    Reason,
    SendOutcome,
    Text,
    WebhookLogPage,
)
from statemachine.phone import e164_phone
from statemachine.providers import ZAPI_DEFAULT_BASE_URL, normalize_failure, zapi_session

# Webhook kinds and their update endpoints (PUT {"value": url}); Z-API requires HTTPS URLs.
WEBHOOK_KINDS: Final = ("connected", "disconnected", "delivery", "received", "message-status")
_WEBHOOK_ME_FIELDS: Final = {
    "connected": "connectedCallbackUrl",
    "disconnected": "disconnectedCallbackUrl",
    "delivery": "deliveryCallbackUrl",
    "received": "receivedCallbackUrl",
    "message-status": "messageStatusCallbackUrl",
}
_MEDIA_ENDPOINT: Final = {
    MessageKind.IMAGE: ("send-image", "image"),
    MessageKind.AUDIO: ("send-audio", "audio"),
    MessageKind.VIDEO: ("send-video", "video"),
    MessageKind.STICKER: ("send-sticker", "sticker"),
}


def send_request(message: OutboundMessage) -> tuple[str, dict[str, Any]]:
    """The endpoint and JSON body of one send, by kind (developer.z-api.io, message/send-*)."""
    body: dict[str, Any] = {"phone": message.to}
    content = message.content
    path: str
    if isinstance(content, Text):
        path = "send-text"
        body["message"] = content.body
    elif isinstance(content, Document):
        extension = (content.extension or content.file_name.rpartition(".")[2] or "pdf").lower()
        path = f"send-document/{extension}"
        body["document"] = content.url
        body["fileName"] = content.file_name
        if content.caption:
            body["caption"] = content.caption
    elif isinstance(content, Media):
        path, key = _MEDIA_ENDPOINT.get(message.kind, ("send-image", "image"))
        body[key] = content.url
        if content.caption and message.kind in (MessageKind.IMAGE, MessageKind.VIDEO):
            body["caption"] = content.caption
    elif isinstance(content, Location):
        path = "send-location"
        body.update(title=content.name, address=content.address, lat=content.latitude, lng=content.longitude)
    elif isinstance(content, Contact):
        path = "send-contact"
        body.update(contactName=content.name, contactPhone=content.phone)
        if content.business_description:
            body["contactBusinessDescription"] = content.business_description
    elif isinstance(content, Reaction):
        path = "send-reaction"
        body.update(reaction=content.emoji, messageId=content.target_provider_message_id)
    else:  # pragma: no cover - the content union is closed
        raise TypeError(type(content).__name__)
    if message.reply_to and not isinstance(content, Reaction):
        body["messageId"] = message.reply_to
    if message.delay_seconds:
        body["delayMessage"] = max(1, min(15, message.delay_seconds))
    return path, body


def send_answer(answer: Answer, *secrets: str) -> SendOutcome:
    """A send's HTTP answer → the honest outcome (QUEUED with ids, or FAILED with a reason)."""
    if answer.failure is not None:
        return SendOutcome(failure=answer.failure, detail=answer.detail)
    payload = answer.payload if isinstance(answer.payload, dict) else {}
    words = error_text(payload, *secrets)
    if answer.status in (401, 403) or "null not allowed" in words:
        return SendOutcome(
            failure=Reason.TOKEN_INVALID, detail="Z-API refused the credentials", http_status=answer.status
        )
    if answer.status == 404:
        return SendOutcome(failure=Reason.INSTANCE_NOT_FOUND, detail="Z-API: instance not found", http_status=404)
    if answer.status >= 500:
        return SendOutcome(
            failure=Reason.PROVIDER_UNAVAILABLE, detail=f"Z-API answered {answer.status}", http_status=answer.status
        )
    if not answer.ok or payload.get("error"):
        reason = normalize_failure(words)
        return SendOutcome(
            failure=reason if reason is not Reason.PROVIDER_ERROR else Reason.PROVIDER_ERROR,
            detail=words or f"Z-API answered {answer.status}",
            http_status=answer.status,
        )
    message_id = payload.get("messageId") or payload.get("id")
    if not isinstance(message_id, str) or not message_id:
        return SendOutcome(
            failure=Reason.PROVIDER_NO_MESSAGE_ID, detail="Z-API answer without messageId", http_status=answer.status
        )
    zaap_id = payload.get("zaapId")
    return SendOutcome(
        provider_message_id=message_id[:128],
        queue_id=(zaap_id if isinstance(zaap_id, str) and zaap_id else message_id)[:128],
        detail="queued by Z-API until its ack",
        http_status=answer.status,
    )


def _action_answer(answer: Answer, what: str, *secrets: str) -> ActionOutcome:
    if answer.failure is not None:
        return ActionOutcome(ok=False, failure=answer.failure, detail=answer.detail)
    words = error_text(answer.payload, *secrets)
    if answer.status in (401, 403) or "null not allowed" in words:
        return ActionOutcome(ok=False, failure=Reason.TOKEN_INVALID, detail="Z-API refused the credentials")
    if answer.status == 404:
        return ActionOutcome(ok=False, failure=Reason.INSTANCE_NOT_FOUND, detail="Z-API: instance not found")
    payload = answer.payload if isinstance(answer.payload, dict) else {}
    if not answer.ok or payload.get("error") or payload.get("value") is False:
        return ActionOutcome(
            ok=False,
            failure=Reason.PROVIDER_ERROR,
            detail=words or f"Z-API {what} answered {answer.status}",
            message=words,
        )
    return ActionOutcome(ok=True, message=words)


class ZapiProvider:
    """Z-API, for every instance registered with provider ZAPI (one client, shared)."""

    webhook_kinds: tuple[str, ...] = WEBHOOK_KINDS

    def __init__(self, base_url: str = ZAPI_DEFAULT_BASE_URL) -> None:
        self.default_base_url = base_url.rstrip("/")
        self._http = JsonHttp("Z-API", traced=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    def instrument(self, tracer_provider: object) -> None:
        self._http.instrument(tracer_provider)  # not traced: the token is in the URL

    def _url(self, credentials: Credentials, method: str) -> str:
        base = (credentials.base_url or self.default_base_url).rstrip("/")
        return f"{base}/instances/{credentials.instance_id}/token/{credentials.token}/{method}"

    async def _call(
        self,
        credentials: Credentials,
        method: str,
        verb: str = "GET",
        *,
        timeout: float,
        body: Any = None,
        sending: bool = False,
    ) -> Answer:
        headers = {"Client-Token": credentials.client_token} if credentials.client_token else {}
        return await self._http.call(
            verb,
            self._url(credentials, method),
            timeout=timeout,
            headers=headers,
            body=body,
            secrets=(credentials.token, credentials.client_token),
            sending=sending,
        )

    # --- session ----------------------------------------------------------------------------

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome:
        status = await self._call(credentials, "status", timeout=timeout / 2)
        if status.failure is not None:
            return ProbeOutcome(connected=None, failure=status.failure, detail=status.detail)
        if status.status in (401, 403):
            return ProbeOutcome(connected=None, failure=Reason.TOKEN_INVALID, detail="Z-API refused the credentials")
        if status.status == 404:
            return ProbeOutcome(connected=None, failure=Reason.INSTANCE_NOT_FOUND, detail="Z-API: instance not found")
        if not isinstance(status.payload, dict) or status.status >= 500:
            return ProbeOutcome(
                connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail=f"Z-API /status answered {status.status}"
            )
        device: dict[str, Any] | None = None
        if status.payload.get("connected") is True:
            answer = await self._call(credentials, "device", timeout=timeout / 2)
            if answer.ok and isinstance(answer.payload, dict):
                device = answer.payload
        return zapi_session(status.payload, device)

    # --- sending ----------------------------------------------------------------------------

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        path, body = send_request(message)
        answer = await self._call(credentials, path, "POST", timeout=timeout, body=body, sending=True)
        return send_answer(answer, credentials.token, credentials.client_token)

    async def number_exists(self, credentials: Credentials, phone: str, *, timeout: float) -> bool | None:
        answer = await self._call(credentials, f"phone-exists/{phone}", timeout=timeout)
        payload = answer.payload
        if isinstance(payload, list) and payload:  # documented: an array
            payload = payload[0]
        if not answer.ok or not isinstance(payload, dict) or not isinstance(payload.get("exists"), bool):
            return None
        return bool(payload["exists"])

    # --- recovery ---------------------------------------------------------------------------

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "qr-code/image", timeout=timeout)
        outcome = _action_answer(answer, "qr-code", credentials.token)
        if not outcome.ok:
            if "already connected" in outcome.detail.lower():
                return ActionOutcome(ok=True, connected=True, message=outcome.detail)
            return outcome
        payload = answer.payload if isinstance(answer.payload, dict) else {}
        value = payload.get("value")
        if payload.get("connected") is True:
            return ActionOutcome(ok=True, connected=True)
        if not isinstance(value, str) or not value:
            return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail="qr-code answer without a QR code")
        text = value if value.startswith("data:") else "data:image/png;base64," + value
        return ActionOutcome(ok=True, qr_text=text, png=png_of_data_url(value))

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, f"phone-code/{phone}", timeout=timeout)
        outcome = _action_answer(answer, "phone-code", credentials.token)
        if not outcome.ok:
            return outcome
        value = answer.payload.get("value") if isinstance(answer.payload, dict) else None
        if not isinstance(value, str) or not value:
            return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail="phone-code answer without a code")
        return ActionOutcome(ok=True, pairing_code=value)

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        return _action_answer(await self._call(credentials, "restart", timeout=timeout), "restart", credentials.token)

    async def restore_session(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "restore-session", timeout=timeout)
        return _action_answer(answer, "restore-session", credentials.token)

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "disconnect", timeout=timeout)
        return _action_answer(answer, "disconnect", credentials.token)

    # --- webhooks ---------------------------------------------------------------------------

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome:
        if kind not in WEBHOOK_KINDS:
            return ActionOutcome(ok=False, failure=Reason.INVALID_ARGUMENT, detail=f"unknown Z-API webhook kind {kind}")
        answer = await self._call(credentials, f"update-webhook-{kind}", "PUT", timeout=timeout, body={"value": url})
        return _action_answer(answer, f"update-webhook-{kind}", credentials.token)

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "me", timeout=timeout)
        outcome = _action_answer(answer, "me", credentials.token)
        if not outcome.ok or not isinstance(answer.payload, dict):
            return outcome
        urls = {
            kind: value
            for kind, key in _WEBHOOK_ME_FIELDS.items()
            if isinstance(value := answer.payload.get(key), str) and value
        }
        return ActionOutcome(ok=True, webhook_urls=urls)

    async def webhook_logs(
        self, credentials: Credentials, *, page: int, per_page: int, timeout: float
    ) -> WebhookLogPage:
        return WebhookLogPage([], failure=Reason.NOT_SUPPORTED_BY_PLAN, detail="Z-API keeps no webhook log to replay")


def device_phone(payload: Any) -> str | None:
    """The phone of a `GET /device` answer, normalised (tests and the simulator share it)."""
    return e164_phone(payload.get("phone")) if isinstance(payload, dict) else None


__all__ = ["WEBHOOK_KINDS", "ZapiProvider", "device_phone", "scrub", "send_answer", "send_request"]
