"""W-API's webhooks: the bodies an instance posts (payloads.py shapes them), where each goes (the
instance's `update-webhook-<kind>` URL, else the simulator's), and the acks and receipts scheduled
after an accepted send."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Final

from adapters.simulator import payloads
from adapters.simulator.payloads import JSONDict
from adapters.simulator.state import SimInstance, SimState

# Which `update-webhook-<kind>` URL (if set for the instance) receives each posted body.
_WEBHOOK_KIND: Final[Mapping[str, str]] = {
    "webhookStatus": "message-status",
    "webhookConnected": "connected",
    "webhookDisconnected": "disconnected",
    "webhookDelivery": "delivery",
    "webhookReceived": "received",
    "": "chat-presence",  # event-less per-chat status bodies
}


class WapiWebhooks(SimState):
    """Emits W-API-shaped webhooks, on demand (emit) or after a send (acks, receipts)."""

    async def emit(self, instance_id: str, kind: str, **kw: Any) -> list[JSONDict]:
        """Post webhook(s) of `kind` now (awaited, in order); returns the bodies posted.

        kinds: status(message_id, status="delivered", to=None), duplicate_status(same),
        out_of_order(message_id, to=None), eventless(chat, status="available"), connected(phone=None),
        connected_without_phone(), disconnected(), delivery(message_id=None, to=None, text=""),
        received(sender="5511988887777", text="oi", message_id=None, push_name="Cliente").
        Emitting only posts: it does not change the instance's behaviour.
        """
        builder = self._builders().get(kind)
        if builder is None:
            raise ValueError(f"unknown emit kind {kind!r}; one of {', '.join(payloads.EMIT_KINDS)}")
        instance = self._instance(instance_id)
        bodies = builder(instance, **kw)
        for body in bodies:
            url = self._webhook_target(instance, body)
            if url is None:
                raise RuntimeError("no webhook URL configured (Simulator(webhook_url=...) or set_webhook_url)")
            await self._post(url, body)
        return bodies

    def _builders(self) -> dict[str, Callable[..., list[JSONDict]]]:
        return {
            "status": self._emit_status,
            "duplicate_status": self._emit_duplicate_status,
            "out_of_order": self._emit_out_of_order,
            "eventless": self._emit_eventless,
            "connected": self._emit_connected,
            "connected_without_phone": self._emit_connected_without_phone,
            "disconnected": self._emit_disconnected,
            "delivery": self._emit_delivery,
            "received": self._emit_received,
        }

    def _recipient_of(self, instance: SimInstance, message_id: str) -> str:
        for send in self._sends.get(instance.instance_id, []):
            if send.get("message_id") == message_id:
                body = send.get("body")
                if isinstance(body, Mapping) and isinstance(body.get("phone"), str):
                    return str(body["phone"])
        return "5511988887777"

    def _emit_status(
        self, instance: SimInstance, message_id: str, status: str = "delivered", to: str | None = None
    ) -> list[JSONDict]:
        to = to or self._recipient_of(instance, message_id)
        return [payloads.webhook_status(instance.instance_id, instance.phone, message_id, status, to)]

    def _emit_duplicate_status(
        self, instance: SimInstance, message_id: str, status: str = "delivered", to: str | None = None
    ) -> list[JSONDict]:
        body = self._emit_status(instance, message_id, status, to)[0]
        return [body, dict(body)]

    def _emit_out_of_order(self, instance: SimInstance, message_id: str, to: str | None = None) -> list[JSONDict]:
        to = to or self._recipient_of(instance, message_id)
        read = payloads.webhook_status(instance.instance_id, instance.phone, message_id, "read", to)
        delivered = payloads.webhook_status(instance.instance_id, instance.phone, message_id, "delivered", to)
        return [read, delivered]

    def _emit_eventless(
        self, instance: SimInstance, chat: str = "5511988887777", status: str = "available"
    ) -> list[JSONDict]:
        return [payloads.webhook_eventless(instance.instance_id, instance.phone, chat, status, instance.lid)]

    def _emit_connected(self, instance: SimInstance, phone: str | None = None) -> list[JSONDict]:
        return [payloads.webhook_connected(instance.instance_id, phone or instance.phone)]

    def _emit_connected_without_phone(self, instance: SimInstance) -> list[JSONDict]:
        return [payloads.webhook_connected(instance.instance_id, None)]

    def _emit_disconnected(self, instance: SimInstance) -> list[JSONDict]:
        return [payloads.webhook_disconnected(instance.instance_id)]

    def _emit_delivery(
        self, instance: SimInstance, message_id: str | None = None, to: str | None = None, text: str = ""
    ) -> list[JSONDict]:
        message_id = message_id or payloads.new_message_id()
        to = to or self._recipient_of(instance, message_id)
        return [
            payloads.webhook_delivery(instance.instance_id, instance.phone, message_id, to, text=text, lid=instance.lid)
        ]

    def _emit_received(
        self,
        instance: SimInstance,
        sender: str = "5511988887777",
        text: str = "oi",
        message_id: str | None = None,
        push_name: str = "Cliente",
    ) -> list[JSONDict]:
        return [
            payloads.webhook_received(
                instance.instance_id,
                instance.phone,
                message_id or payloads.new_message_id(),
                sender,
                text=text,
                push_name=push_name,
            )
        ]

    def _webhook_target(self, instance: SimInstance, body: Mapping[str, Any]) -> str | None:
        kind = _WEBHOOK_KIND.get(str(body.get("event", "")), "")
        return instance.webhook_urls.get(kind) or self.webhook_url

    async def _post_later(self, delay: float, instance: SimInstance, body: JSONDict) -> None:
        await asyncio.sleep(max(delay, 0.0))
        url = self._webhook_target(instance, body)
        if url is not None:
            await self._post(url, body)

    def _schedule_ack(self, instance: SimInstance, message_id: str, to: str) -> None:
        """The send left the phone: a `sent` status and/or a webhookDelivery after acked_after s,
        whether or not the recipient is online."""
        bodies: list[JSONDict] = []
        if instance.acks in ("status", "both"):
            bodies.append(payloads.webhook_status(instance.instance_id, instance.phone, message_id, "sent", to))
        if instance.acks in ("delivery", "both"):
            bodies.append(
                payloads.webhook_delivery(instance.instance_id, instance.phone, message_id, to, lid=instance.lid)
            )
        for body in bodies:
            self._spawn(self._post_later(self.acked_after, instance, body))

    def _schedule_receipts(self, instance: SimInstance, message_id: str, to: str) -> None:
        """Healthy delivery: `delivered` after delivered_after s, `read` after read_after s, unless
        the recipient has its own behaviour (set_recipient)."""
        recipient = self.recipient(to)
        if not recipient.confirms:
            return
        delivered = self.delivered_after if recipient.delivered_after is None else recipient.delivered_after
        read = self.read_after if recipient.read_after is None else recipient.read_after
        for delay, status in ((delivered, "delivered"), (max(read, delivered), "read")):
            if status == "read" and read < 0:
                continue
            body = payloads.webhook_status(instance.instance_id, instance.phone, message_id, status, to)
            self._spawn(self._post_later(delay, instance, body))
