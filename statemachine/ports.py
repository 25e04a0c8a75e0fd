"""Ports the core calls; adapters implement them. Protocols only: no I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from statemachine.changes import ChangeCursor, ChangeKind, ChangePage
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


class ChangeLog(Protocol):
    """The store's transactional change log, read side (docs/change-log.md).

    Every state change appends its entries in its own transaction; readers page through them in
    an order that never gains a row behind a cursor (a change committing late is not skipped).
    """

    async def read_changes(
        self,
        after: ChangeCursor | None,
        *,
        limit: int,
        instance_ids: Sequence[str] | None = None,
        kinds: Sequence[ChangeKind] | None = None,
    ) -> ChangePage:
        """Up to `limit` changes after `after` (from the oldest kept when None) and the cursor to
        resume from: past the last one returned, past rows the filters skipped, and up to the
        horizon when nothing newer is visible yet (so it also serves as a bookmark)."""
        ...

    async def head_change_cursor(self) -> ChangeCursor:
        """ "Now": reading from here yields what commits from now on (never less)."""
        ...

    async def oldest_change_cursor(self) -> ChangeCursor:
        """Just before the oldest change still kept; a cursor below it has lost pruned rows."""
        ...
