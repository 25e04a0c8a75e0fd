"""W-API's HTTP contract under /v1: auth per instance (Bearer token, `instanceId` required), the
instance's behaviour deciding the answer, sends, instance endpoints and webhook configuration."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from adapters.simulator import payloads, recovery
from adapters.simulator.payloads import JSONDict
from adapters.simulator.state import SimInstance, SimRequest
from adapters.simulator.state import json_response as _json
from adapters.simulator.wapi_pairing import WapiPairing

HANG_SECONDS: Final = 30.0  # the `timeout` behaviour: longer than any client timeout, still bounded
_REDACTED_QUERY_KEYS: Final = frozenset({"token", "access_token", "apikey", "api_key", "authorization"})


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class WapiRoutes(WapiPairing):
    """The W-API dialect's endpoints (handle_api is mounted under /v1 by app.build_app)."""

    async def handle_api(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "").strip("/")
        instance_id = request.query.get("instanceId", "")
        instance = self._instances.get(instance_id)
        token = _bearer(request.headers.get("Authorization", ""))
        valid = (
            instance is not None and token is not None and hmac.compare_digest(token.encode(), instance.token.encode())
        )
        query = {k: ("***" if k.lower() in _REDACTED_QUERY_KEYS else v) for k, v in request.query.items()}
        self.requests.append(SimRequest(request.method, f"/{tail}", query, valid))

        body: Any = None
        is_send = tail.startswith("message/send-")
        if request.method in ("POST", "PUT") and request.can_read_body:
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                body = None
        send: JSONDict = {"endpoint": f"/{tail}", "body": body, "status": None, "message_id": None}
        if is_send and instance_id:
            self._sends.setdefault(instance_id, []).append(send)
        response = await self._answer(request.method, tail, instance, valid, body, query, send)
        send["status"] = response.status
        return response

    async def _answer(
        self,
        method: str,
        tail: str,
        instance: SimInstance | None,
        valid_auth: bool,
        body: Any,
        query: Mapping[str, str],
        send: JSONDict,
    ) -> web.StreamResponse:
        if not query.get("instanceId"):
            return _json(payloads.error_body("instanceId is required"), 400)
        if instance is None:
            return _json(payloads.error_body("Instância não encontrada"), 404)
        behaviour = instance.behaviour
        if behaviour == "token_invalid":
            return _json(payloads.error_body("Token inválido ou expirado"), 401)
        if behaviour == "deleted":
            return _json(payloads.error_body("Instância não encontrada"), 404)
        if not valid_auth:
            return _json(payloads.error_body("Token inválido ou expirado"), 401)
        if behaviour == "timeout":
            await self._hang()
            variant = payloads.GATEWAY_VARIANTS[2]  # what a proxy says after its own timeout
            return web.Response(status=variant.status, body=variant.body, content_type="text/html")
        if behaviour == "gateway_error":
            variant = payloads.GATEWAY_VARIANTS[instance.gateway_counter % len(payloads.GATEWAY_VARIANTS)]
            instance.gateway_counter += 1
            return web.Response(
                status=variant.status, body=variant.body, headers={"Content-Type": variant.content_type}
            )

        if tail.startswith("message/send-"):
            if method != "POST":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_send(instance, tail.removeprefix("message/"), body, send)
        if tail in ("webhook/fetch-webhook-logs", "webhook/get-webhook-log") or tail.startswith(
            "webhook/fetch-webhook-log/"
        ):
            if method != "GET":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_webhook_logs(instance, tail.removeprefix("webhook/"), query)
        if tail.startswith("webhook/update-webhook-"):
            if method != "PUT":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_update_webhook(instance, tail.removeprefix("webhook/update-webhook-"), body)
        if tail == "contacts/phone-exists":
            if method != "GET":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_phone_exists(query)
        if tail.startswith("instance/"):
            if method != "GET":
                return _json(payloads.error_body("method not allowed"), 405)
            return self._answer_instance(instance, tail.removeprefix("instance/"), query)
        return _json(payloads.error_body(f"rota não encontrada: /{tail}"), 404)

    async def _hang(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), HANG_SECONDS)

    def _answer_phone_exists(self, query: Mapping[str, str]) -> web.Response:
        """W-API's number check, `GET /v1/contacts/phone-exists?instanceId=&phoneNumber=` →
        `{exists, phoneNumber, lid}` (inferred from public client code; see docs/wapi-contract.md)."""
        phone = "".join(ch for ch in query.get("phoneNumber", "") if ch.isdigit())
        if not phone:
            return _json(payloads.error_body("phoneNumber is required"), 400)
        if phone in self.absent_numbers:
            return _json({"exists": False, "phoneNumber": phone, "lid": None}, 200)
        return _json({"exists": True, "phoneNumber": phone, "lid": f"{int(phone) % 10**14}@lid"}, 200)

    def _connected(self, instance: SimInstance) -> bool:
        return instance.behaviour != "disconnected"

    def _answer_send(self, instance: SimInstance, endpoint: str, body: Any, send: JSONDict) -> web.Response:
        problem = payloads.validate_send(endpoint, body, instance.plan)
        if problem is not None:
            return _json(payloads.error_body(problem), 400)
        behaviour = instance.behaviour
        if behaviour == "disconnected":
            return _json(payloads.error_body("instance not connected"), 400)  # (guess) status code
        if behaviour == "accepted_with_error":
            return _json(payloads.error_body("Falha ao enviar mensagem"))
        if isinstance(body, dict) and str(body.get("phone")) in self.absent_numbers:
            # (inferred: W-API's words for an absent number are not documented; the in-band error
            # form is its usual one) -- the number check's `exists: false` numbers fail their sends.
            return _json(payloads.error_body("Phone number does not exist on WhatsApp"))
        if behaviour == "accepted_without_id":
            return _json(payloads.send_accepted_without_id())
        if behaviour == "accepted_queued":
            return _json(payloads.send_queued(payloads.new_message_id()))
        message_id = payloads.new_message_id()
        send["message_id"] = message_id
        if behaviour in ("healthy", "acking_stall"):
            self._schedule_ack(instance, message_id, str(body["phone"]))
        if behaviour == "healthy":
            self._schedule_receipts(instance, message_id, str(body["phone"]))
        # session_incomplete and silent_stall: accepted with an id, never acked nor delivered;
        # acking_stall: acked (on WhatsApp's servers), never delivered.
        return _json(payloads.send_accepted(message_id))

    def _answer_instance(self, instance: SimInstance, name: str, query: Mapping[str, str]) -> web.StreamResponse:
        behaviour = instance.behaviour
        connected = self._connected(instance)
        phone = None if behaviour == "session_incomplete" else instance.phone
        if name == "status-instance":
            if behaviour == "disconnected":
                return _json(payloads.status_disconnected())
            if behaviour == "session_incomplete":
                return _json(payloads.status_incomplete(instance.status_style))
            return _json(payloads.status_connected(instance.phone, instance.status_style))
        if name == "qr-code":
            return self._answer_qr_code(instance, connected, query)
        if name == "pairing-code":
            return self._answer_pairing_code(instance, query)
        if name == "restart":
            return self._answer_restart(instance)
        if name == "disconnect":
            instance.behaviour = "disconnected"
            body = payloads.webhook_disconnected(instance.instance_id)
            self._spawn(self._post_later(0.0, instance, body))
            instance.recovery.pairing = None
            return _json(recovery.disconnect_answer())
        if name == "fetch-instance":
            answer = payloads.fetch_instance_answer(instance.instance_id, phone, connected, instance.plan)
            answer.update(recovery.fetch_instance_webhooks(instance.webhook_urls))
            return _json(answer)
        return _json(payloads.error_body(f"rota não encontrada: /instance/{name}"), 404)

    def _answer_update_webhook(self, instance: SimInstance, kind: str, body: Any) -> web.Response:
        if kind not in recovery.WEBHOOK_KINDS:
            return _json(payloads.error_body(f"rota não encontrada: /webhook/update-webhook-{kind}"), 404)
        url = recovery.webhook_url_of(body)
        if url is None:
            return _json(payloads.error_body("value (urlWebhook) is required"), 400)
        instance.webhook_urls[kind] = url
        return _json({"error": False, "message": "webhook updated"})
