"""The dialect simulators' state and posting: instances, the webhooks they post, the acks a
send schedules; the Z-API and Evolution routes (zapi_dialect.py, evolution_dialect.py) build on it."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web

from adapters.simulator.dialect_payloads import (
    BEHAVIOURS,
    EVOLUTION,
    ZAPI,
    DialectInstance,
    JSONDict,
    evolution_webhook,
    zapi_webhook,
)

logger = logging.getLogger("wapi_guard.simulator.dialects")


class DialectState:
    """Both dialects on one loopback port; tests and the CLI drive it through its methods."""

    def __init__(self, *, ack_after: float = 0.02, delivered_after: float = 0.05, read_after: float = 0.1) -> None:
        self.ack_after = ack_after
        self.delivered_after = delivered_after
        self.read_after = read_after
        self.instances: dict[str, DialectInstance] = {}
        self.not_on_whatsapp: set[str] = set()
        self.failures: dict[str, str] = {}  # recipient → Z-API send-webhook error text
        # recipient → the JID WhatsApp knows it by, when it is not `<number>@s.whatsapp.net` (a
        # Brazilian mobile registered before the ninth digit): Evolution stores and posts that one.
        self.jids: dict[str, str] = {}
        self.message_jids: dict[str, str] = {}  # Evolution message id → its chat's JID
        # fetchInstances row shape: "v2" (flat Instance rows, `ownerJid`) or "v1" (wrapped in
        # `instance`, `instanceName`/`owner`/`status`), both seen in client code.
        self.fetch_style = "v2"
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._session: ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.posted: list[tuple[str, JSONDict]] = []

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
        body = (zapi_webhook if instance.provider == ZAPI else evolution_webhook)(instance, kind, **kw)
        await self._post(instance, body)
        return body

    def jid(self, number: str) -> str:
        return self.jids.get(number, f"{number}@s.whatsapp.net")

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
                    body = zapi_webhook(instance, "delivery", message_id=message_id, to=to)
                else:
                    body = zapi_webhook(instance, "status", message_ids=[message_id], status=word[step])
            else:
                body = evolution_webhook(
                    instance, "status", message_ids=[message_id], status=evo, remote_jid=self.jid(to)
                )
            self._later(delay, instance, body)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return None
