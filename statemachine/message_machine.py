"""The message machine: PENDING → SENT → DELIVERED → READ → PLAYED (forward only), FAILED, QUEUED.

Defined once per process; `transitions` is used the "static" way (its FAQ's memory-footprint
recipe): one Machine with model=None, triggered on lightweight slot objects through
`machine.events[name].trigger(model)`. No Machine and no add_model per message: that costs
~200 µs and memory per object (as the transitions project's own issue discussions report).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from transitions import Machine, MachineError

from statemachine.domain import MessageRecord, MessageState, Reason, StateChange


class MessageTrigger(StrEnum):
    """Everything that can happen to a stored message."""

    ACCEPT = "accept"  # the provider took the send and gave its id
    FAIL = "fail"  # blocked, refused, timed out, outcome unknown, or a provider "failed" status
    CONFIRM_SENT = "confirm_sent"  # a provider "sent" status
    DELIVER = "deliver"
    READ = "read"
    PLAY = "play"
    RETRY = "retry"  # RetryMessage
    QUEUE = "queue"  # W-API answered only a queue handle (insertedId): QUEUED, not SENT
    LEAVE_QUEUE = "leave_queue"  # the real message id of a queued message became known
    HOLD = "hold"  # the dispatcher's re-run preflight is blocked again: back to HELD (statemachine/hold.py)
    RELEASE = "release"  # the dispatcher claimed a due held message: to the send path
    DROP = "drop"  # a held message expired or was cancelled (never a provider status)


MESSAGE_RANK: dict[MessageState, int] = {
    MessageState.PENDING: 0,
    MessageState.QUEUED: 0,
    MessageState.HELD: 0,
    MessageState.SENT: 1,
    MessageState.DELIVERED: 2,
    MessageState.READ: 3,
    MessageState.PLAYED: 4,
}

# Provider status words (and WhatsApp ack numbers) → the message trigger they fire.
STATUS_TRIGGER: dict[MessageState, MessageTrigger] = {
    MessageState.SENT: MessageTrigger.CONFIRM_SENT,
    MessageState.DELIVERED: MessageTrigger.DELIVER,
    MessageState.READ: MessageTrigger.READ,
    MessageState.PLAYED: MessageTrigger.PLAY,
    MessageState.FAILED: MessageTrigger.FAIL,
}

S = MessageState
M = MessageTrigger
MESSAGE_TRANSITIONS: list[dict[str, object]] = [
    # The provider accepted the message and gave its id.
    {"trigger": M.ACCEPT, "source": S.PENDING, "dest": S.SENT},
    # W-API only queued it (an `insertedId`, no message id): not sent, and never SENT from here
    # without the real id (the delivery webhook that names both).
    {"trigger": M.QUEUE, "source": S.PENDING, "dest": S.QUEUED},
    {"trigger": M.LEAVE_QUEUE, "source": S.QUEUED, "dest": S.SENT},
    # Queued WITH the provider's id (Z-API's 200, Evolution's PENDING answer): the provider's own
    # acks and statuses move it on; nothing else does.
    {"trigger": M.CONFIRM_SENT, "source": S.QUEUED, "dest": S.SENT},
    {"trigger": M.DELIVER, "source": S.QUEUED, "dest": S.DELIVERED},
    {"trigger": M.READ, "source": S.QUEUED, "dest": S.READ},
    {"trigger": M.PLAY, "source": S.QUEUED, "dest": S.PLAYED},
    # Blocked by preflight, refused or timed out at the provider, outcome unknown after a crash
    # mid-send; or a provider "failed" status.
    {"trigger": M.FAIL, "source": [S.PENDING, S.QUEUED, S.SENT], "dest": S.FAILED},
    # Holds: claimed by the dispatcher (→ PENDING, then the normal send), blocked again at
    # dispatch (→ HELD), expired or cancelled (→ FAILED with the last reason, or CANCELLED).
    {"trigger": M.RELEASE, "source": S.HELD, "dest": S.PENDING},
    {"trigger": M.HOLD, "source": S.PENDING, "dest": S.HELD},
    {"trigger": M.DROP, "source": S.HELD, "dest": S.FAILED},
    # A provider "sent" (server ack) status on a message already SENT: nothing to move.
    {"trigger": M.CONFIRM_SENT, "source": S.SENT, "dest": None},
    {"trigger": M.DELIVER, "source": S.SENT, "dest": S.DELIVERED},
    # READ may arrive without DELIVERED.
    {"trigger": M.READ, "source": [S.SENT, S.DELIVERED], "dest": S.READ},
    {"trigger": M.PLAY, "source": [S.SENT, S.DELIVERED, S.READ], "dest": S.PLAYED},
    # Only through RetryMessage.
    {"trigger": M.RETRY, "source": S.FAILED, "dest": S.PENDING},
]

MESSAGE_MACHINE = Machine(
    model=None,
    states=list(MessageState),
    transitions=MESSAGE_TRANSITIONS,
    initial=None,
    auto_transitions=False,
    send_event=True,
)


class _MessageModel:
    __slots__ = ("state",)

    def __init__(self, state: MessageState) -> None:
        self.state: MessageState | str = state


@dataclass(frozen=True, slots=True)
class MessageDecision:
    """Outcome of one message event: where the message ends and whether it moved."""

    from_state: MessageState
    to_state: MessageState
    applied: bool


def decide_message(state: MessageState, trigger: MessageTrigger) -> MessageDecision:
    """Runs `trigger` on a message in `state`. Refused moves are recorded, never applied.

    Forward-only falls out of the table: a DELIVERED after READ has no transition, so the
    message stays READ and the caller records the event as not applied (STALE_STATUS).
    Message transitions have no guards, so each (state, trigger) outcome is computed once by the
    machine and remembered: the hot path pays a dict lookup, not a trigger dispatch.
    """
    return _decide_message(state, trigger)


@functools.cache
def _decide_message(state: MessageState, trigger: MessageTrigger) -> MessageDecision:
    model = _MessageModel(state)
    try:
        MESSAGE_MACHINE.events[trigger].trigger(model)
    except MachineError:
        return MessageDecision(state, state, applied=False)
    return MessageDecision(state, MessageState(model.state), applied=True)


def decide_status(state: MessageState, status: MessageState) -> MessageDecision:
    """A provider status report for a message in `state`."""
    return decide_message(state, STATUS_TRIGGER[status])


def can_message(state: MessageState, trigger: MessageTrigger) -> bool:
    return bool(MESSAGE_MACHINE.get_transitions(trigger, source=state))


DELIVERED_OR_LATER = frozenset({MessageState.DELIVERED, MessageState.READ, MessageState.PLAYED})
STATUS_FAILED_DETAIL = "provider reported status failed"
MAX_FAILURE_DETAIL = 1000


def transition_message(
    msg: MessageRecord,
    trigger: MessageTrigger,
    *,
    reason: Reason,
    source: str,
    at: datetime,
    provider_message_id: str | None = None,
    failure_detail: str = "",
    trace_ids: tuple[str, str] = ("", ""),
    queue_id: str | None = None,
) -> MessageRecord | None:
    """The message as it must be stored after `trigger`, or None when the machine refuses it.

    Every non-status message write goes through here (accept, fail — including preflight blocks,
    provider refusals and OUTCOME_UNKNOWN — and retry): the machine decides the state, this
    rule decides the fields that go with it. The store writes the result with compare-and-set
    against `msg.version`; the returned record carries the next version.
    """
    decision = decide_message(msg.state, trigger)
    if not decision.applied:
        return None
    change = StateChange(msg.state, decision.to_state, reason, source, at)
    after = replace(
        msg, state=decision.to_state, history=[*msg.history, change], updated_at=at, version=msg.version + 1
    )
    if trigger is MessageTrigger.ACCEPT:
        if not provider_message_id:
            return None  # never SENT without the provider's id
        after.provider_message_id = provider_message_id
        after.sent_at = at
    elif trigger is MessageTrigger.QUEUE:
        if not queue_id:
            return None  # queued only with a queue handle
        if provider_message_id:  # queued with the provider's id: its acks will find it
            after.provider_message_id = provider_message_id
        # Queued is not sent: no provider id; sent_at is when W-API took it, so a message that
        # never leaves the queue becomes stuck like a SENT one.
        after.queue_id = queue_id[:128]
        after.sent_at = at
        after.failure_detail = failure_detail[:MAX_FAILURE_DETAIL]
    elif trigger is MessageTrigger.FAIL or trigger is MessageTrigger.DROP:
        after.failure_reason = reason.value
        after.failure_detail = failure_detail[:MAX_FAILURE_DETAIL]
    elif trigger is MessageTrigger.RETRY:
        after.attempts = msg.attempts + 1
        after.failure_reason = ""
        after.failure_detail = ""
        after.provider_message_id = None
        if trace_ids[0]:
            after.trace_id, after.span_id = trace_ids
    return after


def send_outcome(
    msg: MessageRecord,
    *,
    provider_message_id: str | None,
    failure: Reason | None,
    detail: str,
    source: str,
    at: datetime,
    queue_id: str | None = None,
) -> MessageRecord | None:
    """The provider's answer to a send: PENDING → SENT with its id, → QUEUED with only W-API's
    queue handle, or → FAILED with the reason
    (PROVIDER_NO_MESSAGE_ID when a 2xx carried no id: never SENT without one). None when the
    message is no longer PENDING (a reconciler or another replica got there first: its verdict
    stands)."""
    if msg.state is not MessageState.PENDING:
        return None
    if failure is None and provider_message_id and queue_id:
        # The provider took it into its queue and named it (Z-API, Evolution's PENDING): QUEUED
        # until its server ack, never SENT on the HTTP answer alone.
        return transition_message(
            msg,
            MessageTrigger.QUEUE,
            reason=Reason.PROVIDER_QUEUED,
            source=source,
            at=at,
            queue_id=queue_id,
            provider_message_id=provider_message_id,
            failure_detail=detail,
        )
    if failure is None and provider_message_id:
        return transition_message(
            msg,
            MessageTrigger.ACCEPT,
            reason=Reason.PROVIDER_ACCEPTED,
            source=source,
            at=at,
            provider_message_id=provider_message_id,
        )
    if failure is None and queue_id:
        return transition_message(
            msg,
            MessageTrigger.QUEUE,
            reason=Reason.PROVIDER_QUEUED,
            source=source,
            at=at,
            queue_id=queue_id,
            failure_detail=detail,
        )
    return transition_message(
        msg,
        MessageTrigger.FAIL,
        reason=failure or Reason.PROVIDER_NO_MESSAGE_ID,
        source=source,
        at=at,
        failure_detail=detail,
    )


OUTCOME_UNKNOWN_DETAIL = "no provider answer was recorded (process stopped mid-send); check the recipient"


def outcome_unknown(msg: MessageRecord, *, at: datetime) -> MessageRecord | None:
    """PENDING past the grace period: the process died between calling the provider and storing
    its answer. W-API offers no lookup of a message we hold no id for, so the honest verdict is
    FAILED/OUTCOME_UNKNOWN — never SENT, never silently dropped."""
    if msg.state is not MessageState.PENDING:
        return None
    return transition_message(
        msg,
        MessageTrigger.FAIL,
        reason=Reason.OUTCOME_UNKNOWN,
        source="reconciler",
        at=at,
        failure_detail=OUTCOME_UNKNOWN_DETAIL,
    )


def status_change(current: MessageState, status: MessageState, source: str, at: datetime) -> StateChange:
    """The history entry a provider status makes: a transition, or a stale status kept with
    applied=False (a late DELIVERED after READ, a "sent" on a SENT message)."""
    decision = decide_status(current, status)
    if decision.applied and decision.to_state is not decision.from_state:
        return StateChange(decision.from_state, decision.to_state, Reason.WEBHOOK_STATUS, source, at)
    return StateChange(current, status, Reason.STALE_STATUS, source, at, applied=False)


def apply_status(
    msg: MessageRecord, status: MessageState, *, source: str, at: datetime, now: datetime
) -> MessageRecord:
    """The message after a provider status: the next version when applied; a stale one is only
    recorded in the history (the version moves with the change-log events, never without one)."""
    change = status_change(msg.state, status, source, at)
    version = msg.version + 1 if change.applied else msg.version
    after = replace(msg, history=[*msg.history, change], updated_at=now, version=version)
    if change.applied:
        after.state = MessageState(change.to_state)
        if after.state is MessageState.FAILED:
            after.failure_reason = Reason.PROVIDER_ERROR.value
            after.failure_detail = STATUS_FAILED_DETAIL
    return after


def stuck_run_stalls(stuck_in_a_row: int, threshold: int) -> bool:
    """This many messages stuck in SENT with no delivery between them: the session accepts
    sends but delivers nothing (the "Aguardando mensagem" failure). The instance machine's
    REPORT_DELIVERY_STALLED puts it in DEGRADED/DELIVERY_STALLED; `lifts_stall` clears it."""
    return stuck_in_a_row >= threshold


def lifts_stall(change: StateChange, instance_reason: str) -> bool:
    """A delivery (or read/play) on an instance stalled for lack of deliveries lifts the stall:
    the run of stuck messages is broken. The instance machine's REPORT_DELIVERY_RESUMED does it."""
    return change.applied and change.to_state in DELIVERED_OR_LATER and instance_reason == Reason.DELIVERY_STALLED
