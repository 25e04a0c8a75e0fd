"""Z-API and Evolution API simulators: the same behaviours as the W-API simulator, each in its
provider's own dialect, on loopback (docs/providers.md has the shapes and their sources).

One aiohttp app answers both dialects:
- Z-API: `/instances/<id>/token/<token>/<method>` (+ `Client-Token` header when the instance has one);
- Evolution: `/<group>/<action>/<instance name>` with the `apikey` header.

Behaviours (per instance): `healthy` (connected with a phone; server ack, delivery, read),
`session_incomplete` (connected without a phone: Z-API `/device` empty, Evolution `open` without
`ownerJid`), `dropped_webhooks` (acked and delivered, but the status webhooks never posted: only
Evolution's findStatusMessage tells), `silent_stall` (sends accepted, nothing ever acked),
`acking_stall` (server ack only, never delivered), `pairing` (disconnected until the pairing
code is typed), `restore` (Z-API:
"You need to restore the session."), `disconnected`. Quirks kept on purpose: Evolution answers
`restart` of a closed instance with HTTP 200 `{"error": true}`, and a send to a number not on
WhatsApp with 400 `exists: false`; Z-API posts its status webhook with an `ids[]` array and
answers every send with 200 (queued), the outcome coming through its send webhook.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import ClientSession, ClientTimeout, web

logger = logging.getLogger("wapi_guard.simulator.dialects")

BEHAVIOURS: Final = (
    "healthy",
    "session_incomplete",
    "silent_stall",
    "acking_stall",
    "pairing",
    "restore",
    "disconnected",
    "dropped_webhooks",
)
ZAPI: Final = "zapi"
EVOLUTION: Final = "evolution"
RESTORE_ERROR: Final = "You need to restore the session."
_PNG: Final = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
JSONDict = dict[str, Any]


@dataclass(slots=True)
class DialectInstance:
    provider: str
    instance_id: str
    token: str = field(repr=False)
    client_token: str = field(default="", repr=False)
    behaviour: str = "healthy"
    phone: str = "5511987650000"
    webhook_url: str = ""
    pairing_code: str = ""
    sends: list[JSONDict] = field(default_factory=list)
    statuses: dict[str, list[str]] = field(default_factory=dict)  # message id → statuses reached
    configured: dict[str, str] = field(default_factory=dict)  # webhook kind → URL (by API)


class DialectSimulator:
    """Both dialects on one loopback port; tests and the CLI drive it through its methods."""

    def __init__(self, *, ack_after: float = 0.02, delivered_after: float = 0.05, read_after: float = 0.1) -> None:
        self.ack_after = ack_after
        self.delivered_after = delivered_after
        self.read_after = read_after
        self.instances: dict[str, DialectInstance] = {}
        self.not_on_whatsapp: set[str] = set()
        self.failures: dict[str, str] = {}  # recipient → Z-API send-webhook error text
        # fetchInstances row shape: "v2" (flat Instance rows, `ownerJid`) or "v1" (wrapped in
        # `instance`, `instanceName`/`owner`/`status`), both seen in client code.
        self.fetch_style = "v2"
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._session: ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.posted: list[tuple[str, JSONDict]] = []

    # --- lifecycle --------------------------------------------------------------------------

    def attach(self, app: web.Application) -> None:
        """Adds both dialects (and the control routes under /_dialects/) to `app`; the
        W-API simulator mounts them on its own app, so one process speaks all three."""
        app.router.add_route("*", "/instances/{iid}/token/{token}/{method:.+}", self._zapi)
        app.router.add_get("/instance/fetchInstances", self._evolution_fetch)
        app.router.add_route("*", "/{group:instance|message|chat|webhook}/{action}/{name}", self._evolution)
        app.router.add_post("/_dialects/instances", self._control_add)
        app.router.add_post("/_dialects/instances/{iid}/{what:behaviour|emit|pairing}", self._control_instance)
        app.router.add_get("/_dialects/instances/{iid}", self._control_show)
        app.on_cleanup.append(self._cleanup)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        self.attach(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server: Any = site._server
        self._port = int(server.sockets[0].getsockname()[1])

    def bound_to(self, port: int) -> None:
        """The port of the app this was attached to (for root_url)."""
        self._port = port

    async def _cleanup(self, _app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # runs _cleanup
            self._runner = None

    # --- control API (another process drives the simulator over HTTP) ------------------------

    async def _control_add(self, request: web.Request) -> web.Response:
        body = await _body(request)
        if not isinstance(body, dict):
            return web.json_response({"error": "JSON object expected"}, status=400)
        try:
            instance = self.add_instance(
                str(body.get("provider", "")),
                str(body["instance_id"]),
                str(body["token"]),
                behaviour=str(body.get("behaviour", "healthy")),
                phone=str(body.get("phone", "5511987650000")),
                client_token=str(body.get("client_token", "")),
                webhook_url=str(body.get("webhook_url", "")),
            )
        except (KeyError, ValueError) as error:
            return web.json_response({"error": f"bad instance: {error}"}, status=400)
        return web.json_response({"instance_id": instance.instance_id, "provider": instance.provider})

    async def _control_instance(self, request: web.Request) -> web.Response:
        iid, what = request.match_info["iid"], request.match_info["what"]
        if iid not in self.instances:
            return web.json_response({"error": "no such instance"}, status=404)
        body = await _body(request)
        body = body if isinstance(body, dict) else {}
        try:
            if what == "behaviour":
                self.set_behaviour(iid, str(body.get("behaviour", "")))
                return web.json_response({"behaviour": self.instances[iid].behaviour})
            if what == "pairing":
                return web.json_response({"paired": await self.type_pairing_code(iid, str(body.get("code", "")))})
            kind = str(body.pop("kind", ""))
            return web.json_response({"posted": await self.emit(iid, kind, **body)})
        except (KeyError, ValueError, TypeError) as error:
            return web.json_response({"error": str(error)}, status=400)

    async def _control_show(self, request: web.Request) -> web.Response:
        instance = self.instances.get(request.match_info["iid"])
        if instance is None:
            return web.json_response({"error": "no such instance"}, status=404)
        return web.json_response(
            {
                "provider": instance.provider,
                "behaviour": instance.behaviour,
                "sends": instance.sends,
                "webhooks": instance.configured,
                "pairing_code": instance.pairing_code,
            }
        )

    async def __aenter__(self) -> DialectSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- driving ----------------------------------------------------------------------------

    def add_instance(
        self,
        provider: str,
        instance_id: str,
        token: str,
        *,
        behaviour: str = "healthy",
        phone: str = "5511987650000",
        client_token: str = "",
        webhook_url: str = "",
    ) -> DialectInstance:
        if provider not in (ZAPI, EVOLUTION) or behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown provider/behaviour {provider}/{behaviour}")
        instance = DialectInstance(provider, instance_id, token, client_token, behaviour, phone, webhook_url)
        self.instances[instance_id] = instance
        return instance

    def set_behaviour(self, instance_id: str, behaviour: str) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(behaviour)
        self.instances[instance_id].behaviour = behaviour

    def set_webhook_url(self, instance_id: str, url: str) -> None:
        self.instances[instance_id].webhook_url = url

    async def type_pairing_code(self, instance_id: str, code: str) -> bool:
        """The user types the code on the phone: the instance connects and says so (with its phone)."""
        instance = self.instances[instance_id]
        if not instance.pairing_code or code != instance.pairing_code:
            return False
        instance.pairing_code = ""
        instance.behaviour = "healthy"
        await self.emit(instance_id, "connected")
        return True

    async def emit(self, instance_id: str, kind: str, **kw: Any) -> JSONDict:
        """Posts one webhook in the instance's dialect now and returns its body. Kinds: connected,
        connected_without_phone, disconnected, logged_out, qr_refused, status (message_ids, status),
        send_failed (message_id, error)."""
        instance = self.instances[instance_id]
        body = (_zapi_webhook if instance.provider == ZAPI else _evolution_webhook)(instance, kind, **kw)
        await self._post(instance, body)
        return body

    # --- webhooks ---------------------------------------------------------------------------

    async def _post(self, instance: DialectInstance, body: JSONDict) -> None:
        url = instance.webhook_url
        self.posted.append((instance.instance_id, body))
        if not url:
            return
        if self._session is None or self._session.closed:
            self._session = ClientSession(timeout=ClientTimeout(total=5.0))
        try:
            async with self._session.post(url, json=body) as response:
                await response.read()
        except Exception as error:  # a bridge that is down: the test sees the missing effect
            logger.warning("simulator webhook post failed: %s", type(error).__name__)

    def _later(self, delay: float, instance: DialectInstance, body: JSONDict) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            await self._post(instance, body)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(self, instance: DialectInstance, message_id: str, status: str) -> None:
        instance.statuses.setdefault(message_id, []).append(status)

    def _schedule_acks(self, instance: DialectInstance, message_id: str, to: str) -> None:
        behaviour = instance.behaviour
        if behaviour == "silent_stall":
            return
        steps: list[tuple[float, str]] = [(self.ack_after, "sent")]
        if behaviour != "acking_stall":
            steps += [(self.delivered_after, "delivered"), (self.read_after, "read")]
        for delay, step in steps:
            word = {ZAPI: {"sent": "SENT", "delivered": "RECEIVED", "read": "READ"}, EVOLUTION: {}}[instance.provider]
            evo = {"sent": "SERVER_ACK", "delivered": "DELIVERY_ACK", "read": "READ"}[step]
            self._record(instance, message_id, evo)
            if behaviour == "dropped_webhooks":
                continue  # stored at the provider, never posted (Evolution's "original message not found")
            if instance.provider == ZAPI:
                if step == "sent":
                    body = _zapi_webhook(instance, "delivery", message_id=message_id, to=to)
                else:
                    body = _zapi_webhook(instance, "status", message_ids=[message_id], status=word[step])
            else:
                body = _evolution_webhook(instance, "status", message_ids=[message_id], status=evo, to=to)
            self._later(delay, instance, body)

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
                self._later(self.ack_after, instance, _zapi_webhook(instance, "connected"))
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
                _zapi_webhook(instance, "send_failed", message_id=message_id, error=error, to=to),
            )
        elif instance.behaviour not in ("pairing", "restore", "disconnected"):
            self._schedule_acks(instance, message_id, to)
        return web.json_response({"zaapId": zaap_id, "messageId": message_id, "id": message_id})

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

    async def _evolution(self, request: web.Request) -> web.Response:
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
            where = body.get("where", {}) if isinstance(body, dict) else {}
            mid = where.get("id", "")
            rows = [
                {"keyId": mid, "status": s, "remoteJid": where.get("remoteJid")} for s in instance.statuses.get(mid, [])
            ]
            return web.json_response(rows)
        if group == "chat" and action == "whatsappNumbers":
            numbers = body.get("numbers", []) if isinstance(body, dict) else []
            return web.json_response(
                [{"jid": f"{n}@s.whatsapp.net", "exists": n not in self.not_on_whatsapp, "number": n} for n in numbers]
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
            return web.json_response(
                {
                    "status": 400,
                    "error": "Bad Request",
                    "response": {"message": [{"jid": f"{number}@s.whatsapp.net", "exists": False, "number": number}]},
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
        self._schedule_acks(instance, message_id, number)
        return web.json_response(
            {
                "key": {"remoteJid": f"{number}@s.whatsapp.net", "fromMe": True, "id": message_id},
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


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _zapi_webhook(instance: DialectInstance, kind: str, **kw: Any) -> JSONDict:
    now = int(time.time() * 1000)
    base: JSONDict = {"instanceId": instance.instance_id, "momment": now}
    if kind == "connected":
        return base | {"type": "ConnectedCallback", "connected": True, "phone": kw.get("phone", instance.phone)}
    if kind == "connected_without_phone":
        return base | {"type": "ConnectedCallback", "connected": True}
    if kind == "disconnected":
        return base | {"type": "DisconnectedCallback", "disconnected": True, "error": "Device has been disconnected"}
    if kind == "delivery":
        return base | {
            "type": "DeliveryCallback",
            "phone": kw.get("to", ""),
            "messageId": kw["message_id"],
            "zaapId": "Z" + kw["message_id"],
        }
    if kind == "send_failed":
        return base | {
            "type": "DeliveryCallback",
            "phone": kw.get("to", ""),
            "messageId": kw["message_id"],
            "zaapId": "Z" + kw["message_id"],
            "error": kw.get("error", "Phone number does not exist"),
        }
    if kind == "status":
        return base | {
            "type": "MessageStatusCallback",
            "status": kw.get("status", "RECEIVED"),
            "ids": list(kw["message_ids"]),
            "phone": kw.get("to", ""),
            "phoneDevice": 0,
            "isGroup": False,
        }
    raise ValueError(f"unknown Z-API webhook kind {kind}")


def _evolution_webhook(instance: DialectInstance, kind: str, **kw: Any) -> JSONDict:
    name = instance.instance_id
    envelope: JSONDict = {
        "instance": name,
        "destination": instance.webhook_url,
        "date_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "sender": f"{instance.phone}@s.whatsapp.net",
        "server_url": "http://127.0.0.1",
        "apikey": instance.token,  # Evolution really does send it; the bridge must drop it
    }
    if kind == "connected":
        data = {
            "instance": name,
            "wuid": f"{kw.get('phone', instance.phone)}@s.whatsapp.net",
            "state": "open",
            "statusReason": 200,
        }
        return envelope | {"event": "connection.update", "data": data}
    if kind == "connected_without_phone":
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "open", "statusReason": 200},
        }
    if kind == "disconnected":
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "close", "statusReason": 428},
        }
    if kind == "qr_refused":
        return envelope | {
            "event": "connection.update",
            "data": {"instance": name, "state": "refused", "statusReason": 428},
        }
    if kind == "logged_out":
        data = {"instance": name, "status": "closed", "disconnectionReasonCode": 401, "disconnectionObject": "{}"}
        return envelope | {"event": "status.instance", "data": data}
    if kind == "status":
        (mid,) = kw["message_ids"]
        data = {
            "keyId": mid,
            "remoteJid": f"{kw.get('to', '')}@s.whatsapp.net",
            "fromMe": True,
            "participant": None,
            "status": kw.get("status", "DELIVERY_ACK"),
            "instanceId": "6f63" + name,
            "messageId": "row-" + mid,
        }
        return envelope | {"event": "messages.update", "data": data}
    raise ValueError(f"unknown Evolution webhook kind {kind}")
