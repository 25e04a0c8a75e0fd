"""Evolution API's dialect on the simulator: `/<group>/<action>/<instance>` with `apikey`
(docs/providers.md)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from adapters.simulator.dialect_payloads import _PNG, EVOLUTION, DialectInstance
from adapters.simulator.dialect_state import DialectState, _body


class EvolutionDialect(DialectState):
    # --- Evolution --------------------------------------------------------------------------

    def _evolution_instance(self, request: web.Request, name: str) -> DialectInstance | web.Response:
        instance = self.instances.get(name)
        if instance is None or instance.provider != EVOLUTION:
            return web.json_response(
                {
                    "status": 404,
                    "error": "Not Found",
                    "response": {"message": [f'The "{name}" instance does not exist']},
                },
                status=404,
            )
        if not secrets.compare_digest(request.headers.get("apikey", ""), instance.token):
            return web.json_response(
                {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}, status=401
            )
        return instance

    def _evolution_state(self, instance: DialectInstance) -> str:
        if instance.behaviour in ("pairing", "disconnected"):
            return "close"
        return "open"

    async def _evolution_fetch(self, request: web.Request) -> web.Response:
        found = self._evolution_instance(request, request.query.get("instanceName", ""))
        if isinstance(found, web.Response):
            return found
        state = self._evolution_state(found)
        owner = f"{found.phone}@s.whatsapp.net" if state == "open" and found.behaviour != "session_incomplete" else None
        if self.fetch_style == "v1":
            return web.json_response(
                [{"instance": {"instanceName": found.instance_id, "owner": owner, "status": state}}]
            )
        return web.json_response(
            [
                {
                    "id": "6f63" + found.instance_id,
                    "name": found.instance_id,
                    "connectionStatus": state,
                    "ownerJid": owner,
                    "profileName": None,
                    "integration": "WHATSAPP-BAILEYS",
                    "disconnectionReasonCode": 401 if found.behaviour == "disconnected" else None,
                }
            ]
        )

    async def _evolution(self, request: web.Request) -> web.Response:  # size: one branch per endpoint
        group, action, name = request.match_info["group"], request.match_info["action"], request.match_info["name"]
        found = self._evolution_instance(request, name)
        if isinstance(found, web.Response):
            return found
        instance = found
        body = await _body(request)
        state = self._evolution_state(instance)
        if group == "instance" and action == "connectionState":
            return web.json_response({"instance": {"instanceName": name, "state": state}})
        if group == "message" and request.method == "POST":
            return self._evolution_send(instance, action, body)
        if group == "instance" and action == "connect":
            if state == "open":
                return web.json_response({"instance": {"instanceName": name, "state": "open"}})
            number = request.query.get("number", "")
            instance.pairing_code = f"{secrets.randbelow(10**8):08d}" if number else ""
            return web.json_response(
                {
                    "pairingCode": instance.pairing_code or None,
                    "code": "2@sim-qr",
                    "base64": "data:image/png;base64," + _PNG,
                    "count": 1,
                }
            )
        if group == "instance" and action == "restart":
            if state != "open":
                # The quirk: the thrown error is caught and answered with HTTP 200.
                return web.json_response({"error": True, "message": "[object Object]"})
            return web.json_response({"instance": {"instanceName": name, "state": "open"}})
        if group == "instance" and action == "logout":
            if state != "open":
                return web.json_response(
                    {
                        "status": 400,
                        "error": "Bad Request",
                        "response": {"message": ['The "x" instance is not connected']},
                    },
                    status=400,
                )
            instance.behaviour = "disconnected"
            return web.json_response(
                {"status": "SUCCESS", "error": False, "response": {"message": "Instance logged out"}}
            )
        if group == "webhook" and action == "set":
            hook = body.get("webhook") if isinstance(body, dict) else None
            if not isinstance(hook, dict) or not hook.get("url") or "enabled" not in hook:
                return web.json_response(
                    {"status": 400, "error": "Bad Request", "response": {"message": ["url required"]}}, status=400
                )
            instance.configured["evolution"] = hook["url"]
            instance.webhook_url = hook["url"]
            return web.json_response({"webhook": {"instanceName": name, "webhook": hook}}, status=201)
        if group == "webhook" and action == "find":
            url = instance.configured.get("evolution", "")
            return web.json_response({"enabled": bool(url), "url": url, "events": []})
        if group == "chat" and action == "findStatusMessage":
            # channel.service.ts fetchStatusMessage: MessageUpdate rows where keyId = where.id and,
            # only when given, remoteJid = where.remoteJid (the JID as WhatsApp knows the chat).
            where = body.get("where", {}) if isinstance(body, dict) else {}
            mid = where.get("id", "")
            jid = self.message_jids.get(mid, "")
            if where.get("remoteJid") not in (None, jid):
                return web.json_response([])
            rows = [{"keyId": mid, "status": s, "remoteJid": jid} for s in instance.statuses.get(mid, [])]
            return web.json_response(rows)
        if group == "chat" and action == "whatsappNumbers":
            numbers = body.get("numbers", []) if isinstance(body, dict) else []
            return web.json_response(
                [{"jid": self.jid(n), "exists": n not in self.not_on_whatsapp, "number": n} for n in numbers]
            )
        return web.json_response(
            {"status": 404, "error": "Not Found", "response": {"message": ["Cannot route"]}}, status=404
        )

    def _evolution_send(self, instance: DialectInstance, action: str, body: Any) -> web.Response:
        number = body.get("number") if isinstance(body, dict) else None
        if not isinstance(number, str):
            return web.json_response(
                {"status": 400, "error": "Bad Request", "response": {"message": ["number required"]}}, status=400
            )
        if number in self.not_on_whatsapp:
            instance.sends.append({"endpoint": action, "body": body, "messageId": None})  # seen, refused
            return web.json_response(
                {
                    "status": 400,
                    "error": "Bad Request",
                    "response": {"message": [{"jid": self.jid(number), "exists": False, "number": number}]},
                },
                status=400,
            )
        if self._evolution_state(instance) != "open":
            return web.json_response(
                {"status": 400, "error": "Bad Request", "response": {"message": ["Error: Connection Closed"]}},
                status=400,
            )
        message_id = f"3EB0{next(self._ids):016X}"
        instance.sends.append({"endpoint": action, "body": body, "messageId": message_id})
        self.message_jids[message_id] = self.jid(number)
        self._schedule_acks(instance, message_id, number)
        return web.json_response(
            {
                "key": {"remoteJid": self.jid(number), "fromMe": True, "id": message_id},
                "pushName": "Você",
                "status": "PENDING",
                "message": {"conversation": body.get("text", "")},
                "messageType": "conversation",
                "messageTimestamp": int(time.time()),
                "instanceId": "6f63" + instance.instance_id,
                "source": "web",
            },
            status=201,
        )
