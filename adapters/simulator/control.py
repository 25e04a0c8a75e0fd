"""The simulator's control API under /_sim/: a tiny JSON API so another process (the demo, the
e2e tests) can drive it. Loopback test tool only."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from adapters.simulator.payloads import JSONDict
from adapters.simulator.state import json_response as _json
from adapters.simulator.wapi_routes import WapiRoutes


class ControlApi(WapiRoutes):
    """Routes of /_sim/ onto the simulator's public methods."""

    async def handle_control(self, request: web.Request) -> web.StreamResponse:
        """A tiny JSON API so another process can drive the simulator. Loopback test tool only."""
        parts = [p for p in request.match_info.get("tail", "").split("/") if p]
        body: Any = {}
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _json({"error": "body must be JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"error": "body must be a JSON object"}, 400)
        try:
            return await self._control(request.method, parts, body)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            status = 404 if isinstance(exc, KeyError) else 400
            return _json({"error": str(exc).strip("'\"")}, status)

    async def _control(self, method: str, parts: list[str], body: JSONDict) -> web.Response:
        if parts == ["health"] and method == "GET":
            return _json({"ok": True, "base_url": self.base_url, "instances": self.instance_ids()})
        if parts == ["instances"] and method == "POST":
            self.add_instance(
                str(body["instance_id"]),
                str(body["token"]),
                behaviour=str(body.get("behaviour", "healthy")),
                phone=str(body.get("phone", "5511999990000")),
                plan=str(body.get("plan", "PRO")),
                status_style=str(body.get("status_style", "phone")),
                acks=str(body.get("acks", "status")),
            )
            return _json({"instance_id": body["instance_id"]}, 201)
        if len(parts) == 3 and parts[0] == "instances":
            instance_id, action = parts[1], parts[2]
            if action == "behaviour" and method == "POST":
                self.set_behaviour(instance_id, str(body["behaviour"]))
                return _json({"instance_id": instance_id, "behaviour": body["behaviour"]})
            if action == "acks" and method == "POST":
                self.set_acks(instance_id, str(body["acks"]))
                return _json({"instance_id": instance_id, "acks": body["acks"]})
            if action == "emit" and method == "POST":
                kw = dict(body)
                kind = str(kw.pop("kind"))
                return _json({"posted": await self.emit(instance_id, kind, **kw)})
            if action == "sends" and method == "GET":
                self._instance(instance_id)
                return _json({"sends": self.sends(instance_id)})
            if action == "type-pairing-code" and method == "POST":
                return _json(await self.type_pairing_code(instance_id, str(body.get("code", ""))))
            if action == "pairing-code" and method == "GET":
                return _json({"code": self.pending_pairing_code(instance_id)})
            if action == "webhooks" and method == "GET":
                return _json({"urls": self.configured_webhooks(instance_id), "log": self.webhook_log(instance_id)})
        if parts == ["recipients"] and method == "POST":
            self.set_recipient(
                str(body["phone"]),
                confirms=bool(body.get("confirms", True)),
                delivered_after=None if body.get("delivered_after") is None else float(body["delivered_after"]),
                read_after=None if body.get("read_after") is None else float(body["read_after"]),
            )
            return _json({"phone": body["phone"]}, 201)
        if parts == ["webhook-url"] and method == "POST":
            url = body.get("url")
            self.set_webhook_url(str(url) if url else None)
            return _json({"webhook_url": self.webhook_url})
        if parts == ["requests"] and method == "GET":
            return _json({"requests": [r._asdict() for r in self.requests]})
        if parts == ["webhooks"] and method == "GET":
            return _json({"posts": self.webhook_posts, "errors": self.webhook_errors})
        return _json({"error": f"no control route {method} /_sim/{'/'.join(parts)}"}, 404)
