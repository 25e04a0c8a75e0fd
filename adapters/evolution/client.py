"""Evolution API v2 over HTTP: one implementation of the provider port family (statemachine/ports.py).

- Self-hosted: the base URL is per instance (required at registration); header `apikey`.
- Routes `/<group>/<action>/<instance name>`; the instance id IS Evolution's instance name.
- Session truth: `connectionState` (the socket) plus `fetchInstances` (the owner, `ownerJid`),
  judged by statemachine/providers.py `evolution_session`: `open` without an owner is incomplete.
- A send answers the stored message with `status: "PENDING"`: QUEUED with its `key.id` until a
  SERVER_ACK. A 400 whose message lists `exists: false` is NOT_ON_WHATSAPP.
- `instance/connect` and `instance/restart` catch their errors and answer HTTP 200 with
  `{"error": true, …}`: the body decides, never the status alone.
"""

from __future__ import annotations

import json
from typing import Any, Final

from adapters.provider_http import Answer, JsonHttp, error_text, png_of_data_url
from adapters.webhook_common import as_dict
from statemachine.domain import (
    ActionOutcome,
    Contact,
    Credentials,
    Document,
    Location,
    Media,
    MessageKind,
    MessageState,
    OutboundMessage,
    ProbeOutcome,
    Reaction,
    Reason,
    SendOutcome,
    Text,
    WebhookLogPage,
)
from statemachine.providers import EVOLUTION_STATUS, evolution_logged_out, evolution_owner, evolution_session

WEBHOOK_KINDS: Final = ("evolution",)
_RANK: Final = {
    MessageState.SENT: 1,
    MessageState.DELIVERED: 2,
    MessageState.READ: 3,
    MessageState.PLAYED: 4,
    MessageState.FAILED: 5,
}
WEBHOOK_EVENTS: Final = (
    "CONNECTION_UPDATE",
    "QRCODE_UPDATED",
    "STATUS_INSTANCE",
    "MESSAGES_UPSERT",
    "MESSAGES_UPDATE",
    "SEND_MESSAGE",
    "LOGOUT_INSTANCE",
    "REMOVE_INSTANCE",
)
_MEDIA_TYPES: Final = {
    MessageKind.IMAGE: "image",
    MessageKind.VIDEO: "video",
    MessageKind.DOCUMENT: "document",
    MessageKind.AUDIO: "audio",
}


def send_request(message: OutboundMessage) -> tuple[str, dict[str, Any]]:
    """The route (without the instance) and JSON body of one send (src/api/dto/sendMessage.dto.ts)."""
    body: dict[str, Any] = {"number": message.to}
    content = message.content
    if isinstance(content, Text):
        path = "message/sendText"
        body["text"] = content.body
    elif message.kind is MessageKind.AUDIO and isinstance(content, Media):
        path = "message/sendWhatsAppAudio"
        body["audio"] = content.url
    elif message.kind is MessageKind.STICKER and isinstance(content, Media):
        path = "message/sendSticker"
        body["sticker"] = content.url
    elif isinstance(content, (Media, Document)):
        path = "message/sendMedia"
        body.update(mediatype=_MEDIA_TYPES.get(message.kind, "image"), media=content.url)
        if content.caption:
            body["caption"] = content.caption
        if content.mimetype:
            body["mimetype"] = content.mimetype
        if isinstance(content, Document):
            body["fileName"] = content.file_name
    elif isinstance(content, Location):
        path = "message/sendLocation"
        body.update(name=content.name, address=content.address, latitude=content.latitude, longitude=content.longitude)
    elif isinstance(content, Contact):
        path = "message/sendContact"
        body["contact"] = [{"fullName": content.name, "wuid": content.phone, "phoneNumber": content.phone}]
    elif isinstance(content, Reaction):
        path = "message/sendReaction"
        body = {
            "key": {
                "remoteJid": f"{message.to}@s.whatsapp.net",
                "fromMe": True,
                "id": content.target_provider_message_id,
            },
            "reaction": content.emoji,
        }
    else:  # pragma: no cover - the content union is closed
        raise TypeError(type(content).__name__)
    if message.reply_to and not isinstance(content, Reaction):
        body["quoted"] = {"key": {"id": message.reply_to}}
    if message.delay_seconds:
        body["delay"] = message.delay_seconds * 1000
    return path, body


def _not_on_whatsapp(payload: Any) -> bool:
    response = payload.get("response") if isinstance(payload, dict) else None
    messages = response.get("message") if isinstance(response, dict) else None
    return isinstance(messages, list) and any(isinstance(m, dict) and m.get("exists") is False for m in messages)


def send_answer(answer: Answer, *secrets: str) -> SendOutcome:
    """A send's HTTP answer → the honest outcome."""
    if answer.failure is not None:
        return SendOutcome(failure=answer.failure, detail=answer.detail)
    payload = answer.payload
    words = error_text(payload, *secrets)
    status = answer.status
    if status == 401 or status == 403:
        return SendOutcome(failure=Reason.TOKEN_INVALID, detail="Evolution refused the apikey", http_status=status)
    if status == 404:
        return SendOutcome(failure=Reason.INSTANCE_NOT_FOUND, detail="Evolution: instance not found", http_status=404)
    if status == 400 and _not_on_whatsapp(payload):
        return SendOutcome(failure=Reason.NOT_ON_WHATSAPP, detail="the number is not on WhatsApp", http_status=400)
    if status >= 500:
        return SendOutcome(
            failure=Reason.PROVIDER_UNAVAILABLE, detail=f"Evolution answered {status}", http_status=status
        )
    if not answer.ok or not isinstance(payload, dict) or payload.get("error"):
        return SendOutcome(
            failure=Reason.PROVIDER_ERROR, detail=words or f"Evolution answered {status}", http_status=status
        )
    key = as_dict(payload.get("key"))
    message_id = key.get("id")
    if not isinstance(message_id, str) or not message_id:
        return SendOutcome(
            failure=Reason.PROVIDER_NO_MESSAGE_ID, detail="Evolution answer without key.id", http_status=status
        )
    state = EVOLUTION_STATUS.get(str(payload.get("status", "")).upper())
    if state in (MessageState.SENT, MessageState.DELIVERED, MessageState.READ, MessageState.PLAYED):
        return SendOutcome(provider_message_id=message_id[:128], http_status=status)  # already acked
    # PENDING (or no status): the server has not acked it: QUEUED with its id.
    return SendOutcome(
        provider_message_id=message_id[:128],
        queue_id=message_id[:128],
        detail="Evolution answered PENDING: not sent until its server ack",
        http_status=status,
    )


def action_answer(answer: Answer, what: str, *secrets: str) -> ActionOutcome:
    """An action's answer: HTTP 200 with `{"error": true}` is a FAILED action (connect/restart)."""
    if answer.failure is not None:
        return ActionOutcome(ok=False, failure=answer.failure, detail=answer.detail)
    words = error_text(answer.payload, *secrets)
    if answer.status in (401, 403):
        return ActionOutcome(ok=False, failure=Reason.TOKEN_INVALID, detail="Evolution refused the apikey")
    if answer.status == 404:
        return ActionOutcome(ok=False, failure=Reason.INSTANCE_NOT_FOUND, detail="Evolution: instance not found")
    payload = as_dict(answer.payload)
    if not answer.ok or payload.get("error") is True:
        detail = words if words and words != "[object Object]" else f"Evolution {what} failed"
        return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail=detail, message=words)
    return ActionOutcome(ok=True, message=words)


class EvolutionProvider:
    """Evolution API v2, for every instance registered with provider EVOLUTION (one client)."""

    webhook_kinds: tuple[str, ...] = WEBHOOK_KINDS

    def __init__(self) -> None:
        self._http = JsonHttp("Evolution", traced=True)

    async def aclose(self) -> None:
        await self._http.aclose()

    def instrument(self, tracer_provider: object) -> None:
        self._http.instrument(tracer_provider)  # the apikey is a header, not recorded

    async def _call(
        self,
        credentials: Credentials,
        route: str,
        verb: str = "GET",
        *,
        timeout: float,
        body: Any = None,
        params: dict[str, str] | None = None,
        sending: bool = False,
        per_instance: bool = True,
    ) -> Answer:
        if not credentials.base_url:
            return Answer(
                failure=Reason.PROVIDER_UNAVAILABLE if sending else Reason.TIMEOUT_OR_GATEWAY, detail="no base_url"
            )
        url = f"{credentials.base_url.rstrip('/')}/{route}"
        if per_instance:  # routerPath: /<group>/<action>/<instance name>
            url += f"/{credentials.instance_id}"
        return await self._http.call(
            verb,
            url,
            timeout=timeout,
            headers={"apikey": credentials.token},
            body=body,
            params=params,
            secrets=(credentials.token,),
            sending=sending,
        )

    # --- session ----------------------------------------------------------------------------

    async def _instance_row(self, credentials: Credentials, *, timeout: float) -> tuple[dict[str, Any] | None, Answer]:
        answer = await self._call(
            credentials,
            "instance/fetchInstances",
            timeout=timeout,
            params={"instanceName": credentials.instance_id},
            per_instance=False,
        )
        rows = answer.payload if isinstance(answer.payload, list) else [answer.payload]
        for row in rows:
            if isinstance(row, dict):
                inner: dict[str, Any] = as_dict(row.get("instance")) or row
                name = inner.get("name", inner.get("instanceName"))
                if name in (None, credentials.instance_id):
                    return inner, answer
        return None, answer

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome:
        answer = await self._call(credentials, "instance/connectionState", timeout=timeout / 2)
        if answer.failure is not None:
            return ProbeOutcome(connected=None, failure=answer.failure, detail=answer.detail)
        if answer.status in (401, 403):
            return ProbeOutcome(connected=None, failure=Reason.TOKEN_INVALID, detail="Evolution refused the apikey")
        if answer.status == 404:
            return ProbeOutcome(
                connected=None, failure=Reason.INSTANCE_NOT_FOUND, detail="Evolution: instance not found"
            )
        payload = as_dict(answer.payload)
        inner = as_dict(payload.get("instance")) or payload
        state = inner.get("state")
        if not answer.ok or not isinstance(state, str):
            return ProbeOutcome(
                connected=None,
                failure=Reason.TIMEOUT_OR_GATEWAY,
                detail=f"Evolution connectionState answered {answer.status}",
            )
        row, row_answer = await self._instance_row(credentials, timeout=timeout / 2)
        unread = row_answer.failure is not None or (row is None and not row_answer.ok)
        if unread and state.lower() == "open":  # the owner could not be read: unknown, not incomplete
            return ProbeOutcome(
                connected=None, failure=Reason.TIMEOUT_OR_GATEWAY, detail="Evolution fetchInstances failed"
            )
        if state.lower() != "open" and row is not None and evolution_logged_out(row.get("disconnectionReasonCode")):
            return ProbeOutcome(
                connected=False, failure=Reason.LOGGED_OUT, detail="Evolution: logged out, no automatic reconnect"
            )
        return evolution_session(state, evolution_owner(row))

    # --- sending ----------------------------------------------------------------------------

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome:
        route, body = send_request(message)
        answer = await self._call(credentials, route, "POST", timeout=timeout, body=body, sending=True)
        return send_answer(answer, credentials.token)

    async def number_exists(self, credentials: Credentials, phone: str, *, timeout: float) -> bool | None:
        answer = await self._call(
            credentials, "chat/whatsappNumbers", "POST", timeout=timeout, body={"numbers": [phone]}
        )
        rows = answer.payload if isinstance(answer.payload, list) else []
        if not answer.ok or not rows or not isinstance(rows[0], dict) or not isinstance(rows[0].get("exists"), bool):
            return None
        return bool(rows[0]["exists"])

    async def missed_statuses(
        self, credentials: Credentials, recipient: str, provider_message_id: str, *, timeout: float
    ) -> list[bytes] | None:
        """chat/findStatusMessage: the statuses Evolution stored for one message (it may have
        dropped their webhooks), as `messages.update` bodies for the ingest path.

        Asked by the message id alone (channel.service.ts fetchStatusMessage filters `keyId`, and
        `remoteJid` only when given): the chat's JID is WhatsApp's, not our recipient: a Brazilian
        mobile known without its ninth digit, or a LID chat, would match nothing."""
        jid = recipient if "@" in recipient else f"{recipient}@s.whatsapp.net"
        body = {"where": {"id": provider_message_id}, "offset": 50, "page": 1}
        answer = await self._call(credentials, "chat/findStatusMessage", "POST", timeout=timeout, body=body)
        if not answer.ok:
            return None
        payload = answer.payload
        rows = payload.get("records", payload.get("messages", [])) if isinstance(payload, dict) else payload
        words = sorted(
            {
                str(row.get("status", "")).upper()
                for row in (rows if isinstance(rows, list) else [])
                if isinstance(row, dict)
                and str(row.get("status", "")).upper() in EVOLUTION_STATUS
                and row.get("keyId", provider_message_id) == provider_message_id  # another message's: never
            },
            key=lambda word: _RANK.get(EVOLUTION_STATUS[word], 9),
        )
        return [
            json.dumps(
                {
                    "event": "messages.update",
                    "instance": credentials.instance_id,
                    "data": {"keyId": provider_message_id, "remoteJid": jid, "fromMe": True, "status": word},
                    "source": "findStatusMessage",
                },
                separators=(",", ":"),
            ).encode()
            for word in words
        ]

    # --- recovery ---------------------------------------------------------------------------

    async def _connect(
        self, credentials: Credentials, params: dict[str, str] | None, *, timeout: float
    ) -> tuple[ActionOutcome, Any]:
        answer = await self._call(credentials, "instance/connect", timeout=timeout, params=params)
        return action_answer(answer, "connect", credentials.token), answer.payload

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        outcome, payload = await self._connect(credentials, None, timeout=timeout)
        if not outcome.ok:
            return outcome
        payload = as_dict(payload)
        inner = as_dict(payload.get("instance"))
        if str(inner.get("state", "")).lower() == "open":
            return ActionOutcome(ok=True, connected=True)
        image = payload.get("base64")
        code = payload.get("code")
        if not isinstance(image, str) or not image:
            # The reported failure mode: {"count": 0} and no code. Distinct, never a spin.
            return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail="Evolution produced no QR code")
        return ActionOutcome(
            ok=True, qr_text=code if isinstance(code, str) and code else image, png=png_of_data_url(image)
        )

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome:
        outcome, payload = await self._connect(credentials, {"number": phone}, timeout=timeout)
        if not outcome.ok:
            return outcome
        code = payload.get("pairingCode") if isinstance(payload, dict) else None
        if not isinstance(code, str) or not code:
            return ActionOutcome(ok=False, failure=Reason.PROVIDER_ERROR, detail="Evolution produced no pairing code")
        return ActionOutcome(ok=True, pairing_code=code)

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "instance/restart", "POST", timeout=timeout)
        return action_answer(answer, "restart", credentials.token)

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "instance/logout", "DELETE", timeout=timeout)
        return action_answer(answer, "logout", credentials.token)

    # --- webhooks ---------------------------------------------------------------------------

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome:
        body = {
            "webhook": {"enabled": True, "url": url, "byEvents": False, "base64": False, "events": list(WEBHOOK_EVENTS)}
        }
        answer = await self._call(credentials, "webhook/set", "POST", timeout=timeout, body=body)
        return action_answer(answer, "webhook/set", credentials.token)

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome:
        answer = await self._call(credentials, "webhook/find", timeout=timeout)
        outcome = action_answer(answer, "webhook/find", credentials.token)
        if not outcome.ok:
            return outcome
        payload = as_dict(answer.payload)
        url = payload.get("url")
        enabled = payload.get("enabled") is not False
        return ActionOutcome(
            ok=True, webhook_urls={"evolution": url} if isinstance(url, str) and url and enabled else {}
        )

    async def webhook_logs(
        self, credentials: Credentials, *, page: int, per_page: int, timeout: float
    ) -> WebhookLogPage:
        return WebhookLogPage(
            [], failure=Reason.NOT_SUPPORTED_BY_PLAN, detail="Evolution keeps no webhook log to replay"
        )
