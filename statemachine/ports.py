"""Ports the core calls; adapters implement them. Protocols only: no I/O here."""

from __future__ import annotations

from typing import Protocol

from statemachine.domain import Credentials, OutboundMessage, ProbeOutcome, SendOutcome


class Provider(Protocol):
    """A WhatsApp provider (W-API in production, the simulator everywhere else).

    Implementations never raise for provider trouble: every outcome is a value, so the core can
    persist it. They never retry a send (a retry could deliver twice); probes may retry.
    """

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome: ...

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome: ...

    async def aclose(self) -> None: ...
