"""W-API's recovery endpoints (QR code, pairing code, restart, the webhook log) and the operator's
side of a pairing (type_pairing_code: the code typed on the phone)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping

from aiohttp import web

from adapters.simulator import payloads, recovery
from adapters.simulator.payloads import JSONDict
from adapters.simulator.state import SimInstance
from adapters.simulator.state import json_response as _json
from adapters.simulator.wapi_webhooks import WapiWebhooks


class WapiPairing(WapiWebhooks):
    """Pairing, restart and webhook-log answers of the W-API dialect."""

    def _answer_qr_code(self, instance: SimInstance, connected: bool, query: Mapping[str, str]) -> web.Response:
        if connected and instance.behaviour != "session_incomplete":
            return _json(payloads.qr_code_answer(True))
        state = instance.recovery
        if not state.qr_png:  # one QR per pairing attempt, like WhatsApp's (refreshed after a pairing)
            state.qr_png = recovery.qr_png(instance.instance_id)
        png = state.qr_png
        if query.get("image") == "enable":
            return web.Response(body=png, content_type="image/png")
        return _json(recovery.qr_answer(png))

    def _answer_pairing_code(self, instance: SimInstance, query: Mapping[str, str]) -> web.Response:
        state = instance.recovery
        state.pairing_requests += 1
        if instance.behaviour in ("healthy", "silent_stall", "acking_stall", "accepted_queued"):
            return _json(recovery.already_connected_answer(instance.phone))
        phone = recovery.pairing_phone(query)
        if phone is None:
            return _json(payloads.error_body("phoneNumber inválido (apenas dígitos, com DDI e DDD)"), 400)
        state.pairing = recovery.PendingPairing(recovery.new_pairing_code(), phone, time.monotonic())
        return _json(recovery.pairing_answer(state.pairing.code))

    def _answer_restart(self, instance: SimInstance) -> web.Response:
        """Restarting keeps the session as it was (an incomplete one stays incomplete): the
        disconnection and the new connection are posted as webhooks."""
        instance.recovery.restarts += 1
        self._spawn(self._post_later(0.0, instance, payloads.webhook_disconnected(instance.instance_id)))
        if instance.behaviour != "disconnected":
            phone = None if instance.behaviour == "session_incomplete" else instance.phone
            self._spawn(
                self._post_later(self.restart_after, instance, payloads.webhook_connected(instance.instance_id, phone))
            )
        return _json(recovery.restart_answer())

    def _answer_webhook_logs(self, instance: SimInstance, name: str, query: Mapping[str, str]) -> web.Response:
        if instance.plan != "PRO":
            return _json(payloads.error_body("Recurso disponível apenas no plano PRO"), 400)  # (guess) code
        if name == "fetch-webhook-logs":
            body, status = recovery.logs_page(instance.recovery, query)
            return _json(body, status)
        log_id = query.get("id", "") if name == "get-webhook-log" else name.rsplit("/", 1)[-1]
        body, status = recovery.log_entry(instance.recovery, log_id)
        return _json(body, status)

    async def type_pairing_code(self, instance_id: str, code: str) -> JSONDict:
        """The operator typed the pairing code on the phone: the session pairs with that phone."""
        instance = self._instance(instance_id)
        pending = instance.recovery.pairing
        if pending is None or not hmac.compare_digest(pending.code.encode(), code.strip().upper().encode()):
            raise ValueError("no pairing code like that is pending for this instance")
        instance.recovery.pairing = None
        instance.recovery.qr_png = b""
        instance.phone = pending.phone
        instance.behaviour = "healthy"
        instance.gateway_counter = 0
        if self.forget_webhooks_on_pairing:
            instance.webhook_urls.clear()
        body = payloads.webhook_connected(instance.instance_id, pending.phone)
        url = self._webhook_target(instance, body)
        if url is not None:
            await self._post(url, body)
        return {"instance_id": instance_id, "phone": pending.phone}

    def pending_pairing_code(self, instance_id: str) -> str | None:
        pending = self._instance(instance_id).recovery.pairing
        return pending.code if pending else None

    def webhook_log(self, instance_id: str) -> list[JSONDict]:
        return list(self._instance(instance_id).recovery.log)

    def configured_webhooks(self, instance_id: str) -> dict[str, str]:
        return dict(self._instance(instance_id).webhook_urls)
