"""Ports the core calls; adapters implement them. Protocols only: no I/O here."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from statemachine.domain import ActionOutcome, Credentials, OutboundMessage, ProbeOutcome, SendOutcome, WebhookLogPage


class Provider(Protocol):
    """A WhatsApp provider (W-API in production, the simulator everywhere else).

    Implementations never raise for provider trouble: every outcome is a value, so the core can
    persist it. They never retry a send (a retry could deliver twice); probes may retry.
    """

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome: ...

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class InstanceOperations(Protocol):
    """The provider's instance operations an operator drives (W-API in production). Values, never
    exceptions, for provider trouble; the token never appears in what they return."""

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome: ...

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome: ...

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def webhook_logs(
        self, credentials: Credentials, *, page: int, per_page: int, timeout: float
    ) -> WebhookLogPage: ...
