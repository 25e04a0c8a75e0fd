"""Ports the core calls; adapters implement them. Protocols only: no I/O here."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeAlias, runtime_checkable

from statemachine.changes import ChangeCursor, ChangeKind, ChangePage
from statemachine.domain import (
    ActionOutcome,
    Credentials,
    InstanceRecord,
    MessageState,
    OutboundMessage,
    ProbeOutcome,
    SendOutcome,
    StateChange,
    WebhookLogPage,
)
from statemachine.events import ProviderEvent, Route
from statemachine.instance_machine import InstanceDecision


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

    webhook_kinds: tuple[str, ...]
    """The provider's webhook kinds an instance is configured with (all point at the bridge)."""

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome: ...

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome: ...

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def webhook_logs(
        self, credentials: Credentials, *, page: int, per_page: int, timeout: float
    ) -> WebhookLogPage: ...


# --- the provider port family (issue 24): what every provider offers, W-API one of three -----


class SessionProbe(Protocol):
    """Reads the provider's session and returns it before judgement (statemachine/providers.py
    holds each provider's truth rule; the instance machine applies the one phone rule)."""

    async def probe(self, credentials: Credentials, *, timeout: float) -> ProbeOutcome: ...


class Sender(Protocol):
    """Sends one message by kind: exactly one request, never retried. A provider that only queues
    (Z-API's 200, Evolution's PENDING) answers with its id AND a queue handle: stored QUEUED."""

    async def send(self, credentials: Credentials, message: OutboundMessage, *, timeout: float) -> SendOutcome: ...


class WebhookDialect(Protocol):
    """A provider's webhook bodies → the domain's events. `split` cuts a body that reports several
    messages (Z-API's `ids[]`) into one body per event; `parse` never raises."""

    name: str

    def split(self, raw: bytes) -> list[bytes]: ...

    def parse(self, raw: bytes) -> ProviderEvent: ...


class RecoveryActions(Protocol):
    """QR, pairing code, restart, disconnect: values, never exceptions."""

    async def qr_code(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def pairing_code(self, credentials: Credentials, phone: str, *, timeout: float) -> ActionOutcome: ...

    async def restart(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...

    async def disconnect(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...


class WebhookConfiguration(Protocol):
    """Points the provider's webhooks at the bridge and reads them back (drift check)."""

    webhook_kinds: tuple[str, ...]

    async def set_webhook(self, credentials: Credentials, kind: str, url: str, *, timeout: float) -> ActionOutcome: ...

    async def webhook_urls(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...


@runtime_checkable
class SessionRestore(Protocol):
    """A gentler remedy than a QR where the provider offers one (Z-API's restore-session)."""

    async def restore_session(self, credentials: Credentials, *, timeout: float) -> ActionOutcome: ...


@runtime_checkable
class NumberCheck(Protocol):
    """Whether a number is on WhatsApp, where the provider offers it (not on the send path)."""

    async def number_exists(self, credentials: Credentials, phone: str, *, timeout: float) -> bool | None: ...


@runtime_checkable
class StatusReconciliation(Protocol):
    """Pulls the statuses the provider stored for one sent message (Evolution's
    chat/findStatusMessage), as bodies of the provider's own webhook dialect, so they go through
    the normal ingest path (dedupe, forward-only). None when the provider could not be asked."""

    async def missed_statuses(
        self, credentials: Credentials, recipient: str, provider_message_id: str, *, timeout: float
    ) -> list[bytes] | None: ...


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

    async def change_log_identity(self) -> tuple[str, str]:
        """(log id, cursor key), hex: who this log is and the key that signs its cursors."""
        ...


WebhookParser: TypeAlias = Callable[[bytes], ProviderEvent]
"""The provider's webhook dialect: one raw body → one flat event. Never raises: a body it cannot
use is an UNROUTABLE event with a reason."""

ChangeWakeups: TypeAlias = Callable[[Callable[[], None], Callable[[bool], None]], Coroutine[Any, Any, None]]
"""A source of "the log may have grown" wake-ups (PostgreSQL LISTEN): runs until cancelled, calls
its first argument on every wake-up and its second with True/False as it starts/stops listening."""


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
class AckSample:
    """A server ack of one of our sends (a "sent" status, or a webhookDelivery for it: the message
    left the phone), with the message it acks, as the stall test reads it."""

    message_id: str
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


@dataclass(frozen=True, slots=True)
class RecoveryReservation:
    """An operator action's place in the per-instance limit: its audit row (`action_id`), or None
    with the seconds until the oldest counted action leaves the window (`retry_after`)."""

    action_id: int | None
    retry_after: float = 0.0


# --- outbound webhook subscriptions ----------------------------------------------------------

PENDING = "pending"
SUCCEEDED = "succeeded"
EXHAUSTED = "exhausted"
DELIVERY_STATES = (PENDING, SUCCEEDED, EXHAUSTED)


@dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    id: str
    url: str
    secret: str
    event_types: list[str]
    instance_ids: list[str]
    owner: str
    description: str
    enabled: bool
    disabled_reason: str
    cursor: str
    consecutive_failures: int
    failed_attempts: int
    succeeded: int
    last_error: str
    last_success_at: datetime | None
    last_failure_at: datetime | None
    created_at: datetime
    updated_at: datetime
    version: int
    # Attempts cut at the webhook timeout, and attempts not made because the target was refused
    # (a private/loopback address, a name that does not resolve, outside the creator's scope).
    timeouts: int = 0
    refused: int = 0


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    pending: int
    exhausted: int
    oldest_pending_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    event_id: str
    event_type: str
    instance_id: str
    occurred_at: datetime
    body: str


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: int
    subscription_id: str
    event_id: str
    event_type: str
    instance_id: str
    occurred_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int
    last_error: str
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class ClaimedAttempt:
    """One attempt this replica owns: post `body` to `url`, signed with `secret`."""

    delivery_id: int
    subscription_id: str
    event_id: str
    attempt: int
    url: str
    secret: str
    body: str
    instance_id: str = ""
    owner: str = ""


class SubscriptionStore(Protocol):
    """Outbound webhook subscriptions and their deliveries (one claimer per attempt, see
    docs/events.md)."""

    async def create_subscription(
        self,
        sub_id: str,
        *,
        url: str,
        secret: str,
        event_types: Sequence[str],
        instance_ids: Sequence[str],
        owner: str,
        description: str,
        enabled: bool,
        cursor: str,
    ) -> SubscriptionRecord: ...
    async def get_subscription(self, sub_id: str) -> SubscriptionRecord | None: ...
    async def list_subscriptions(self, *, enabled_only: bool = False) -> list[SubscriptionRecord]: ...
    async def update_subscription(self, sub_id: str, **changes: Any) -> SubscriptionRecord | None: ...
    async def delete_subscription(self, sub_id: str) -> bool: ...
    async def disable(self, sub_id: str, reason: str, error: str) -> None: ...
    async def stats(self, sub_ids: Sequence[str]) -> dict[str, SubscriptionStats]: ...
    async def enqueue(
        self, sub_id: str, *, expected_cursor: str, new_cursor: str, deliveries: Sequence[NewDelivery]
    ) -> bool: ...
    async def claim_due(
        self, *, limit: int, lease: float, per_subscription: int | None = None, busy: Mapping[str, int] | None = None
    ) -> list[ClaimedAttempt]: ...
    async def record_success(self, attempt: ClaimedAttempt, status_code: int) -> bool: ...
    async def record_failure(
        self,
        attempt: ClaimedAttempt,
        *,
        status_code: int,
        error: str,
        retry_at: datetime | None,
        kind: str = "",
    ) -> bool: ...
    async def note_error(self, sub_id: str, error: str) -> None: ...
    async def next_due_at(self) -> datetime | None: ...
    async def list_deliveries(
        self, sub_id: str, *, states: Sequence[str] = (), limit: int = 100, before_id: int | None = None
    ) -> list[DeliveryRecord]: ...
    async def replay(self, sub_id: str, delivery_ids: Sequence[int] = ()) -> int: ...
