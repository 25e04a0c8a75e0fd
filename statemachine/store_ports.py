"""The store's ports: one protocol per aggregate, then one per consumer (each use case names only
what it uses). Persistence as the core sees it: every write stores a decision of the machines
(statemachine/message_machine.py, statemachine/instance_machine.py) with compare-and-set (and its
change-log entries, in the same transaction); nothing here decides a transition on its own. The
result types are in ports.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from statemachine.domain import (
    InstanceRecord,
    InstanceState,
    MessageRecord,
    MessageState,
    Plan,
    Reason,
    RecoveryAction,
    StateChange,
)
from statemachine.events import ProviderEvent
from statemachine.instance_machine import InstanceTrigger
from statemachine.ports import (
    AckSample,
    ChangeLog,
    IngestResult,
    InstanceChange,
    MessageChange,
    PruneReport,
    ReceiptSample,
    RecoveryReservation,
    RetentionPolicy,
    SendSample,
)

T = TypeVar("T")


class StoreErrors(Protocol):
    transient_errors: tuple[type[Exception], ...]
    """Its exceptions after which the same write may succeed when tried again (a connection blip)."""
    unavailable_errors: tuple[type[Exception], ...]
    """Its exceptions that mean "storage unavailable, nothing was done" (answered UNAVAILABLE)."""


class InstanceReads(Protocol):
    async def get_instance(self, instance_id: str) -> tuple[InstanceRecord, str] | None: ...
    async def list_credentials(self) -> list[tuple[str, str]]: ...


class InstanceTransitions(Protocol):
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


class InstanceRegistry(InstanceReads, InstanceTransitions, Protocol):
    async def upsert_instance(
        self, instance_id: str, name: str, token: str | None, plan: Plan
    ) -> tuple[InstanceRecord, bool]: ...
    async def delete_instance(self, instance_id: str) -> bool: ...
    async def list_instances(self, states: Sequence[InstanceState] = ()) -> list[InstanceRecord]:
        """Every instance (of these states), ordered by id, with its stuck count."""
        ...

    async def stuck_counts(self, instance_ids: Sequence[str] | None = None) -> dict[str, int]: ...
    async def instance_state_counts(self) -> dict[InstanceState, int]: ...
    async def touch_instances(
        self, last_event: dict[str, datetime], last_receipt: dict[str, datetime] | None = None
    ) -> None: ...
    async def instance_changes_since(self, after_id: int, limit: int = 500) -> list[tuple[int, str, StateChange]]: ...
    async def last_instance_change_id(self) -> int: ...
    async def instance_history(self, instance_id: str, limit: int = 50) -> list[StateChange]: ...


class DeliveryHistory(Protocol):
    """Bounded reads for the stall test."""

    async def recent_sends(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[SendSample]: ...
    async def recent_receipts(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[ReceiptSample]: ...
    async def recent_acks(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[AckSample]: ...
    async def sending_instances(self, since: datetime, *, limit: int = 1000) -> list[str]: ...


class Parked(Protocol):
    async def apply_parked(self, provider_message_id: str | None = None) -> list[MessageChange]:
        """Applies parked statuses whose message now exists (all recent ones when no id is given);
        returns the changes, each with its send attempt's span. The store re-checks after each of
        the two commits that can race (the SENT write, the parking write); the sweep calls it as the
        backstop (adapters/persistence/parked.py)."""
        ...


class MessageReads(Protocol):
    async def get_message(self, message_id: str) -> MessageRecord | None: ...
    async def list_messages(
        self,
        *,
        instance_id: str = "",
        states: Sequence[MessageState] = (),
        stuck_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[MessageRecord], str]: ...


class Messages(MessageReads, Protocol):
    async def insert_message(self, msg: MessageRecord) -> tuple[MessageRecord, bool]: ...
    async def record_outcome(
        self,
        msg: MessageRecord,
        *,
        provider_message_id: str | None,
        failure: Reason | None,
        detail: str,
        source: str,
        queue_id: str | None = None,
    ) -> MessageRecord:
        """The provider's answer to the send of `msg` (as this process inserted it), stored: the
        store picks its batched PENDING → SENT lane or the locked path (a row that moved)."""
        ...

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


class WebhookEvents(Protocol):
    async def ingest(
        self, event: ProviderEvent, payload: bytes, headers: dict[str, str], received_at: datetime
    ) -> IngestResult: ...


class Sweeps(Parked, Protocol):
    async def mark_stuck(self, cutoff: datetime, *, limit: int = 500) -> list[MessageRecord]: ...
    async def reconcile_pending(self, cutoff: datetime, *, limit: int = 200) -> list[MessageRecord]: ...
    async def prune(self, policy: RetentionPolicy) -> PruneReport: ...


# --- one transaction over several aggregates: the unit of work ----------------------------------


@dataclass(frozen=True, slots=True)
class InstanceSignal:
    """One instance trigger to run, with what comes with it."""

    instance_id: str
    trigger: InstanceTrigger
    source: str
    new_phone: str | None = None
    checked_at: datetime | None = None
    event_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StuckRun:
    """An instance's newest stuck sends (after its latest stall ended) and its latest delivery
    status after the oldest of them: what statemachine/stuck.py `stalls` decides on."""

    sent: list[datetime]
    last_delivery: datetime | None


class InstancesInTransaction(Protocol):
    async def apply_triggers(self, signals: Sequence[InstanceSignal]) -> list[InstanceChange]:
        """The one writer of instance transitions (the instance machine on the locked rows)."""
        ...

    async def lift_stall(self, instance_id: str, changes: list[InstanceChange]) -> None: ...


class MessagesInTransaction(Protocol):
    async def locked(self, message_id: str) -> MessageRecord | None: ...
    async def save(self, before: MessageRecord, after: MessageRecord) -> None:
        """The version compare-and-set of a message the machine moved, with its change-log rows."""
        ...


class StuckRunsInTransaction(Protocol):
    async def read(self, instance_ids: Sequence[str], threshold: int) -> dict[str, StuckRun]: ...
    async def stalls_with_deliveries(self) -> dict[str, tuple[datetime, datetime | None]]:
        """Each stalled instance: when its stall began, its newest delivery status since a little
        before (statemachine/stuck.py `contradicts`)."""
        ...


class Transaction(Protocol):
    """One open transaction and the aggregates' stores inside it."""

    @property
    def instances(self) -> InstancesInTransaction: ...
    @property
    def messages(self) -> MessagesInTransaction: ...
    @property
    def stuck_runs(self) -> StuckRunsInTransaction: ...


class UnitOfWork(Protocol):
    async def atomically(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Runs `work` in one transaction: committed when it returns, rolled back when it raises."""
        ...


# --- by consumer ------------------------------------------------------------------------------


class HealthStore(InstanceRegistry, Protocol):
    """services/app/health.py: registration, probes, the health cache, WatchInstances."""


class SendingStore(StoreErrors, InstanceTransitions, Messages, Protocol):
    """services/app/sending.py: SendMessage, RetryMessage, ListMessages."""

    async def count_gateway_failure(self, instance_id: str, *, failed: bool) -> int: ...


class StatusPullStore(InstanceReads, MessageReads, Protocol):
    """services/app/provider_reconcile.py: the instances and stuck messages a status pull asks about."""


class StallWatchStore(InstanceReads, InstanceTransitions, DeliveryHistory, Protocol):
    """services/app/stall_watch.py: the learned stall test."""


class IngestStore(WebhookEvents, Protocol):
    """services/app/ingest.py: webhooks."""


class JobsStore(Sweeps, UnitOfWork, Protocol):
    """services/app/jobs.py: reconciliation, the stuck sweep (its stall of stuck runs through the
    unit of work), retention."""


class Store(ChangeLog, HealthStore, SendingStore, StallWatchStore, IngestStore, JobsStore, Protocol):
    """Everything the use cases' stores are, together (what the composition root wires)."""

    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


class RecoveryStore(InstanceReads, InstanceTransitions, Protocol):
    """services/app/recovery.py: the instance's reads and transitions, the recovery audit, the
    webhook configuration state and the lookups of W-API's webhook-log replay (the replay itself
    goes through the ingest use case, the sweep through the jobs use case)."""

    async def record_recovery_action(self, action: RecoveryAction) -> None: ...
    async def reserve_recovery_action(
        self, action: RecoveryAction, *, since: datetime, limit: int, window: float
    ) -> RecoveryReservation | None: ...
    async def finish_recovery_action(self, action_id: int, outcome: str, detail: str) -> None: ...
    async def list_recovery_actions(self, instance_id: str, limit: int = 50) -> list[RecoveryAction]: ...
    async def set_webhooks_state(self, instance_id: str, state: str, detail: str) -> InstanceRecord | None: ...
    async def event_stored(self, dedupe_key: str) -> bool: ...
    async def last_event_received_at(self, instance_id: str) -> datetime | None: ...
