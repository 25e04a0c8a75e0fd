"""Ports the core calls; adapters implement them. Protocols only: no I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from statemachine.changes import ChangeCursor, ChangeKind, ChangePage
from statemachine.domain import (
    ActionOutcome,
    Credentials,
    InstanceRecord,
    InstanceState,
    MessageRecord,
    MessageState,
    OutboundMessage,
    Plan,
    ProbeOutcome,
    Reason,
    SendOutcome,
    StateChange,
    WebhookLogPage,
)
from statemachine.events import ProviderEvent, Route
from statemachine.machines import InstanceDecision, InstanceTrigger


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


# --- the store -------------------------------------------------------------------------------


class ConcurrentUpdateError(RuntimeError):
    """A compare-and-set lost its race; the caller may re-read and retry."""


@dataclass(frozen=True, slots=True)
class InstanceChange:
    """An instance trigger as stored: the row after it and the machine's decision."""

    instance: InstanceRecord
    decision: InstanceDecision
    source: str
    at: datetime


@dataclass(frozen=True, slots=True)
class MessageChange:
    message_id: str
    change: StateChange
    # The send attempt's span, for a span link from the webhook that caused this change.
    trace_id: str = ""
    span_id: str = ""
    sent_at: datetime | None = None


@dataclass(slots=True)
class IngestResult:
    event_id: str
    route: Route
    reason: str
    instance_id: str | None
    duplicate: bool = False
    instance_changes: list[InstanceChange] = field(default_factory=list)
    message_changes: list[MessageChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SendSample:
    """A send as the stall test reads it."""

    message_id: str
    recipient: str
    state: MessageState
    created_at: datetime
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReceiptSample:
    """A delivery/read webhook with the message it confirms, as the stall test reads it."""

    message_id: str
    recipient: str
    sent_at: datetime
    received_at: datetime


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of history is kept (see docs/data-layer.md)."""

    events: timedelta = timedelta(days=30)
    chat_statuses: timedelta = timedelta(days=30)
    instance_transitions: timedelta = timedelta(days=90)
    messages: timedelta = timedelta(days=90)
    change_log: timedelta = timedelta(days=7)
    batch: int = 1_000
    # Pause between batches: a long backlog never holds the database for long at a stretch.
    pause: float = 0.02


@dataclass(slots=True)
class PruneReport:
    """Rows deleted per table in one run; `ran` is False when another replica held the lease."""

    ran: bool
    deleted: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = True


class Store(ChangeLog, Protocol):
    """Persistence as the core sees it. Every write stores a decision of the machines in
    `statemachine.machines` with compare-and-set (and its change-log entries, in the same
    transaction); nothing here decides a transition on its own."""

    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...

    # instances
    async def upsert_instance(
        self, instance_id: str, name: str, token: str | None, plan: Plan
    ) -> tuple[InstanceRecord, bool]: ...
    async def get_instance(self, instance_id: str) -> tuple[InstanceRecord, str] | None: ...
    async def delete_instance(self, instance_id: str) -> bool: ...
    async def list_instances(self, states: Sequence[InstanceState] = ()) -> list[InstanceRecord]: ...
    async def list_credentials(self) -> list[tuple[str, str]]: ...
    async def stuck_counts(self, instance_ids: Sequence[str] | None = None) -> dict[str, int]: ...
    async def apply_instance_trigger(
        self,
        instance_id: str,
        trigger: InstanceTrigger,
        *,
        source: str,
        new_phone: str | None = None,
        checked_at: datetime | None = None,
        event_at: datetime | None = None,
    ) -> InstanceChange | None: ...
    async def count_gateway_failure(self, instance_id: str, *, failed: bool) -> int: ...
    async def touch_instances(self, last_event: dict[str, datetime]) -> None: ...
    async def instance_changes_since(self, after_id: int, limit: int = 500) -> list[tuple[int, str, StateChange]]: ...
    async def last_instance_change_id(self) -> int: ...
    async def instance_history(self, instance_id: str, limit: int = 50) -> list[StateChange]: ...
    # delivery history, bounded reads for the stall test
    async def recent_sends(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[SendSample]: ...
    async def recent_receipts(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[ReceiptSample]: ...
    async def sending_instances(self, since: datetime, *, limit: int = 1000) -> list[str]: ...

    # messages
    async def insert_message(self, msg: MessageRecord) -> tuple[MessageRecord, bool]: ...
    async def get_message(self, message_id: str) -> MessageRecord | None: ...
    async def record_sent(
        self, msg: MessageRecord, provider_message_id: str, *, source: str
    ) -> MessageRecord | None: ...
    async def record_send_outcome(
        self,
        message_id: str,
        *,
        provider_message_id: str | None,
        failure: Reason | None,
        detail: str,
        source: str,
        queue_id: str | None = None,
    ) -> tuple[MessageRecord, list[MessageChange]]: ...
    async def reset_for_retry(
        self, message_id: str, *, source: str, trace_ids: tuple[str, str] = ("", "")
    ) -> MessageRecord: ...
    async def apply_parked(self, provider_message_id: str | None = None) -> int: ...
    async def list_messages(
        self,
        *,
        instance_id: str = "",
        states: Sequence[MessageState] = (),
        stuck_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[MessageRecord], str]: ...

    # webhooks
    async def ingest(
        self, event: ProviderEvent, payload: bytes, headers: dict[str, str], received_at: datetime
    ) -> IngestResult: ...

    # sweeps
    async def mark_stuck(self, cutoff: datetime, *, limit: int = 500) -> list[MessageRecord]: ...
    async def reconcile_pending(self, cutoff: datetime, *, limit: int = 200) -> list[MessageRecord]: ...
    async def stall_candidates(self, instance_ids: Sequence[str], threshold: int) -> list[str]: ...
    async def stall_if_stuck_run(self, instance_id: str, threshold: int) -> InstanceChange | None: ...

    # retention
    async def prune(self, policy: RetentionPolicy) -> PruneReport: ...
