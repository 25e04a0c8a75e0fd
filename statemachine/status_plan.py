"""The plan of a batch of provider status events: pure, dialect-free, one code for one event or many.

Given the message rows the store read (the narrow `StatusFacts`, with the instance's reason) and
the events, `plan_statuses` returns per event what must be stored: the decision of the message
machine (`status_change`), the event's outcome, the message's compare-and-set update (new state,
failure fields, the history entries to append, the next version) and its change-log entries.
The store executes a plan through a statement builder (SQLite through SQLAlchemy, PostgreSQL
over `unnest()` arrays) and nothing else: it writes an update only where the row still has the
version the plan was made on and the event was stored (not a re-delivery), and re-plans the rest
on the fresh row.

One event per message per plan: a second status of the same message waits for the next round, so
each decision sees its predecessor's outcome and a duplicate never leaves a chained decision
behind it (`first_per_key`).

A delivery on an instance stalled for lack of deliveries also lifts the stall (`lifts_stall`):
an instance transition that must happen in the same transaction. A plan made with
`allow_lift=False` (the group-committed lanes) marks such an event `DEFER`; the store hands it to
its locked one-event transaction, which plans it again with `allow_lift=True` and runs the
instance machine's REPORT_DELIVERY_RESUMED next to the write.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from statemachine import changes as change_log
from statemachine.domain import MessageState, Reason, StateChange
from statemachine.events import EventReason
from statemachine.message_machine import MESSAGE_RANK, STATUS_FAILED_DETAIL, lifts_stall, status_change
from statemachine.ports import MessageChange


@dataclass(frozen=True, slots=True)
class StatusFacts:
    """The columns of a message a status plan reads, and its instance's reason."""

    id: str
    instance_id: str
    to: str
    provider_message_id: str | None
    state: MessageState
    attempts: int
    version: int
    created_at: datetime
    sent_at: datetime | None
    failure_reason: str
    failure_detail: str
    trace_id: str = ""
    span_id: str = ""
    instance_reason: str = ""


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One provider status for (instance, provider message id), at the provider's moment."""

    instance_id: str
    provider_message_id: str
    status: MessageState
    at: datetime
    source: str = "webhook"
    failure_reason: str = ""  # a FAILED status's normalized reason (empty: PROVIDER_ERROR)
    failure_detail: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.instance_id, self.provider_message_id)


class StatusOutcome(StrEnum):
    APPLIED = "APPLIED"  # the machine moved the message
    STALE = "STALE"  # recorded on the message (applied=False), state unchanged
    UNKNOWN = "UNKNOWN"  # no such message (yet): the event is parked
    DEFER = "DEFER"  # it would lift a stall: planned again on the locked path


@dataclass(frozen=True, slots=True)
class MessageUpdate:
    """The compare-and-set update of one message: applied only while its version is `from_version`."""

    message_id: str
    from_version: int
    state: MessageState
    failure_reason: str
    failure_detail: str
    entries: tuple[StateChange, ...]
    updated_at: datetime
    to_version: int


@dataclass(frozen=True, slots=True)
class StatusStep:
    """What one event does, as the store must write it."""

    index: int
    outcome: StatusOutcome
    message_id: str | None = None
    change: StateChange | None = None
    update: MessageUpdate | None = None
    log: tuple[change_log.Change, ...] = ()
    message_change: MessageChange | None = None
    lifts_stall: bool = False
    after: StatusFacts | None = None

    @property
    def event_reason(self) -> EventReason:
        return {
            StatusOutcome.APPLIED: EventReason.APPLIED,
            StatusOutcome.STALE: EventReason.STALE_STATUS,
        }.get(self.outcome, EventReason.UNKNOWN_MESSAGE)

    @property
    def parked(self) -> bool:
        return self.outcome is StatusOutcome.UNKNOWN


@dataclass(slots=True)
class StatusPlan:
    steps: list[StatusStep] = field(default_factory=list)

    @property
    def updates(self) -> list[MessageUpdate]:
        return [s.update for s in self.steps if s.update is not None]


def plan_status(
    index: int, event: StatusEvent, facts: StatusFacts | None, *, now: datetime, allow_lift: bool = True
) -> StatusStep:
    """One event against the message as read (None: not stored yet)."""
    if facts is None:
        return StatusStep(index, StatusOutcome.UNKNOWN)
    change = status_change(facts.state, event.status, event.source, event.at)
    lift = lifts_stall(change, facts.instance_reason)
    if lift and not allow_lift:
        return StatusStep(index, StatusOutcome.DEFER, message_id=facts.id)
    state = MessageState(change.to_state) if change.applied else facts.state
    failed = change.applied and state is MessageState.FAILED
    # A stale status is recorded in the history but leaves the version alone: every version
    # bump is a change-log event, so a consumer comparing GetMessage with the feed never sees a
    # version no event carried.
    after = replace(
        facts,
        state=state,
        version=facts.version + 1 if change.applied else facts.version,
        failure_reason=(event.failure_reason or Reason.PROVIDER_ERROR.value) if failed else facts.failure_reason,
        failure_detail=(event.failure_detail or STATUS_FAILED_DETAIL)[:1000] if failed else facts.failure_detail,
    )
    update = MessageUpdate(
        facts.id, facts.version, state, after.failure_reason, after.failure_detail, (change,), now, after.version
    )
    return StatusStep(
        index,
        StatusOutcome.APPLIED if change.applied else StatusOutcome.STALE,
        message_id=facts.id,
        change=change,
        update=update,
        log=tuple(change_log.message_changes(after, change)),
        message_change=MessageChange(facts.id, change, facts.trace_id, facts.span_id, facts.sent_at),
        lifts_stall=lift,
        after=after,
    )


def plan_statuses(
    events: Sequence[tuple[int, StatusEvent]],
    facts: Mapping[tuple[str, str], StatusFacts],
    *,
    now: datetime,
    allow_lift: bool = True,
) -> StatusPlan:
    """A plan for events of distinct messages (see `first_per_key`), in the order given."""
    return StatusPlan(
        [plan_status(index, event, facts.get(event.key), now=now, allow_lift=allow_lift) for index, event in events]
    )


def plan_chain(facts: StatusFacts, events: Sequence[StatusEvent], *, now: datetime) -> list[StatusStep]:
    """Several stored statuses of one message (parked ones: their events are already stored),
    applied one after another in rank order, each on the message as the previous one left it.
    The store writes them as one compare-and-set update (`merge`)."""
    ordered = sorted(enumerate(events), key=lambda item: (MESSAGE_RANK.get(item[1].status, 9), item[1].at))
    steps: list[StatusStep] = []
    current = facts
    for index, event in ordered:
        step = plan_status(index, event, current, now=now)
        steps.append(step)
        assert step.after is not None
        current = step.after
    return steps


def merge(steps: Sequence[StatusStep]) -> MessageUpdate | None:
    """Consecutive updates of one message as one: from the first version, every entry, the last state."""
    updates = [s.update for s in steps if s.update is not None]
    if not updates:
        return None
    last = updates[-1]
    entries = tuple(entry for u in updates for entry in u.entries)
    return replace(last, from_version=updates[0].from_version, entries=entries)


K = TypeVar("K", bound=Hashable)


def first_per_key(indices: Sequence[int], key_of: Callable[[int], K]) -> tuple[list[int], list[int]]:
    """This round (the first event of each key, in order) and the rest (for later rounds)."""
    seen: set[K] = set()
    now_: list[int] = []
    later: list[int] = []
    for index in indices:
        key = key_of(index)
        (later if key in seen else now_).append(index)
        seen.add(key)
    return now_, later
