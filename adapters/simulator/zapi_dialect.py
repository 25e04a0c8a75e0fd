"""Z-API's dialect on the simulator: `/instances/<id>/token/<token>/<method>` (docs/providers.md)."""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web

from adapters.simulator.dialect_payloads import _PNG, RESTORE_ERROR, ZAPI, DialectInstance, zapi_webhook
from adapters.simulator.dialect_state import DialectState, _body


class ZapiDialect(DialectState):
    # --- Z-API ------------------------------------------------------------------------------

    async def _zapi(self, request: web.Request) -> web.Response:
        instance = self.instances.get(request.match_info["iid"])
        if instance is None or instance.provider != ZAPI:
            return web.json_response({"error": "Instance not found"}, status=404)
        if not secrets.compare_digest(request.match_info["token"], instance.token):
            return web.json_response({"error": "Invalid token"}, status=401)
        if instance.client_token and request.headers.get("Client-Token", "") != instance.client_token:
            return web.json_response({"error": "null not allowed"}, status=400)
        method = request.match_info["method"]
        body = await _body(request)
        connected = instance.behaviour not in ("pairing", "restore", "disconnected")
        if method == "status":
            error = {"restore": RESTORE_ERROR}.get(instance.behaviour, "" if connected else "You are not connected.")
            return web.json_response({"connected": connected, "error": error, "smartphoneConnected": connected})
        if method == "device":
            phone = instance.phone if connected and instance.behaviour != "session_incomplete" else ""
            return web.json_response(
                {"phone": phone, "name": "", "device": {"sessionName": "Z-API"}, "originalDevice": "android"}
            )
        if method.startswith("send-") and request.method == "POST":
            return self._zapi_send(instance, method, body)
        if method == "qr-code/image":
            return web.json_response({"value": "data:image/png;base64," + _PNG})
        if method.startswith("phone-code/"):
            instance.pairing_code = f"{secrets.randbelow(10**8):08d}"
            return web.json_response({"value": instance.pairing_code})
        if method in ("restart", "restore-session"):
            if instance.behaviour == "restore":
                instance.behaviour = "healthy"
                self._later(self.ack_after, instance, zapi_webhook(instance, "connected"))
            return web.json_response({"value": True})
        if method == "disconnect":
            instance.behaviour = "disconnected"
            return web.json_response({"value": True})
        if method.startswith("update-webhook-") and request.method == "PUT":
            url = body.get("value") if isinstance(body, dict) else None
            if not isinstance(url, str) or not url:
                return web.json_response({"error": "value required"}, status=400)
            instance.configured[method.removeprefix("update-webhook-")] = url
            instance.webhook_url = url
            return web.json_response({"value": True})
        if method == "me":
            fields = {
                "connected": "connectedCallbackUrl",
                "disconnected": "disconnectedCallbackUrl",
                "delivery": "deliveryCallbackUrl",
                "received": "receivedCallbackUrl",
                "message-status": "messageStatusCallbackUrl",
            }
            return web.json_response(
                {"id": instance.instance_id, "connected": connected}
                | {key: instance.configured.get(kind, "") for kind, key in fields.items()}
            )
        if method.startswith("phone-exists/"):
            phone = method.removeprefix("phone-exists/")
            return web.json_response([{"exists": phone not in self.not_on_whatsapp, "phone": phone}])
        return web.json_response({"error": f"unknown method {method}"}, status=405)

    def _zapi_send(self, instance: DialectInstance, method: str, body: Any) -> web.Response:
        if not isinstance(body, dict) or not isinstance(body.get("phone"), str):
            return web.json_response({"error": "phone required"}, status=400)
        to = body["phone"]
        message_id = f"3EB0{next(self._ids):016X}"
        zaap_id = f"Z{message_id}"
        instance.sends.append({"endpoint": method, "body": body, "messageId": message_id})
        # Z-API queues every send (a 200 says nothing more); the outcome comes by webhook.
        if to in self.failures or to in self.not_on_whatsapp:
            error = self.failures.get(to, "Phone number does not exist")
            self._later(
                self.ack_after,
                instance,
                zapi_webhook(instance, "send_failed", message_id=message_id, error=error, to=to),
            )
        elif instance.behaviour not in ("pairing", "restore", "disconnected"):
            self._schedule_acks(instance, message_id, to)
        return web.json_response({"zaapId": zaap_id, "messageId": message_id, "id": message_id})
