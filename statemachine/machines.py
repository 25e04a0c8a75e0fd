"""The two state machines, each defined once per process.

`transitions` is used the "static" way (its FAQ's memory-footprint recipe): one Machine with
model=None, triggered on lightweight slot objects through `machine.events[name].trigger(model)`.
No Machine and no add_model per message: that costs ~200 µs and memory per object
(pytransitions/transitions#146, #379, #434).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from transitions import EventData, Machine, MachineError

from statemachine.domain import InstanceState, MessageRecord, MessageState, ProbeOutcome, Reason, StateChange
from statemachine.phone import e164_phone

# --- message ---------------------------------------------------------------------------------


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


MESSAGE_RANK: dict[MessageState, int] = {
    MessageState.PENDING: 0,
    MessageState.QUEUED: 0,
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
    # Blocked by preflight, refused or timed out at the provider, outcome unknown after a crash
    # mid-send; or a provider "failed" status.
    {"trigger": M.FAIL, "source": [S.PENDING, S.QUEUED, S.SENT], "dest": S.FAILED},
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
            return None  # queued only with W-API's queue handle
        # Queued is not sent: no provider id; sent_at is when W-API took it, so a message that
        # never leaves the queue becomes stuck like a SENT one.
        after.queue_id = queue_id[:128]
        after.sent_at = at
        after.failure_detail = failure_detail[:MAX_FAILURE_DETAIL]
    elif trigger is MessageTrigger.FAIL:
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
    """The message after a provider status (applied or recorded as stale): the next version."""
    change = status_change(msg.state, status, source, at)
    after = replace(msg, history=[*msg.history, change], updated_at=now, version=msg.version + 1)
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


# --- instance --------------------------------------------------------------------------------


class InstanceTrigger(StrEnum):
    """Every signal about an instance's session, whoever reports it."""

    REPORT_CONNECTED = "report_connected"  # a probe (or registration) says connected
    REPORT_RECONNECTED = "report_reconnected"  # a connection *event*: the session was re-established
    REPORT_DISCONNECTED = "report_disconnected"
    REPORT_GATEWAY_FAILURE = "report_gateway_failure"
    REPORT_TOKEN_INVALID = "report_token_invalid"  # noqa: S105 - a trigger name, not a secret
    REPORT_NOT_FOUND = "report_not_found"
    REPORT_DELIVERY_STALLED = "report_delivery_stalled"  # the sweeper: a run of stuck messages
    REPORT_DELIVERY_RESUMED = "report_delivery_resumed"  # a delivery/read after a stall
    REQUEST_DISCONNECT = "request_disconnect"  # an operator logged the session out
    BEGIN_RESTART = "begin_restart"  # an operator restarted the session at W-API
    BEGIN_PAIRING = "begin_pairing"  # an operator asked for a QR code or a pairing code
    CLEAR_STALL = "clear_stall"  # an operator vouches that the stalled session delivers again


class _InstanceModel:
    __slots__ = ("phone", "reason", "state")

    def __init__(self, state: InstanceState, reason: str, phone: str | None) -> None:
        self.state: InstanceState | str = state
        self.reason = reason
        self.phone = phone


def _has_phone(event: EventData) -> bool:
    phone = event.kwargs.get("phone")
    return isinstance(phone, str) and bool(phone.strip())


def _is_stalled(event: EventData) -> bool:
    model = event.model
    assert isinstance(model, _InstanceModel)
    return model.state == InstanceState.DEGRADED and model.reason == Reason.DELIVERY_STALLED


RECOVERY_REASONS = frozenset({Reason.RESTARTING.value, Reason.PAIRING_IN_PROGRESS.value})


def _is_recovering(event: EventData) -> bool:
    """A restart or pairing the operator started: its own reason stays visible until it ends."""
    model = event.model
    assert isinstance(model, _InstanceModel)
    return model.reason in RECOVERY_REASONS


def _set(reason: Reason, phone: str = "keep") -> Callable[[EventData], None]:
    """An `after` callback that records the reason (and what happens to the phone)."""

    def apply(event: EventData) -> None:
        model = event.model
        assert isinstance(model, _InstanceModel)
        model.reason = reason
        if phone == "take":
            model.phone = event.kwargs["phone"]
        elif phone == "clear":
            model.phone = None

    return apply


IS = InstanceState
T = InstanceTrigger
ANY = list(InstanceState)
INSTANCE_TRANSITIONS: list[dict[str, object]] = [
    # "Connected" counts only with a strong signal: a phone number / me.id. The same trigger
    # serves webhook, probe and registration, so no path can report CONNECTED without a phone.
    {
        "trigger": T.REPORT_CONNECTED,
        "source": ANY,
        "dest": IS.CONNECTED,
        "conditions": _has_phone,
        "unless": _is_stalled,
        "after": _set(Reason.PHONE_CONFIRMED, phone="take"),
    },
    {
        "trigger": T.REPORT_CONNECTED,
        "source": ANY,
        "dest": IS.SESSION_INCOMPLETE,
        "unless": [_has_phone, _is_recovering],
        "after": _set(Reason.SESSION_INCOMPLETE, phone="clear"),
    },
    # A connection *event* (the session was re-established) also clears a delivery stall; a
    # routine probe saying "connected" does not: a silently stalled session probes healthy.
    {
        "trigger": T.REPORT_RECONNECTED,
        "source": ANY,
        "dest": IS.CONNECTED,
        "conditions": _has_phone,
        "after": _set(Reason.PHONE_CONFIRMED, phone="take"),
    },
    {
        "trigger": T.REPORT_RECONNECTED,
        "source": ANY,
        "dest": IS.SESSION_INCOMPLETE,
        "unless": [_has_phone, _is_recovering],
        "after": _set(Reason.SESSION_INCOMPLETE, phone="clear"),
    },
    # The session going down (and a QR waiting) is what a restart or pairing looks like half-way:
    # it keeps the recovery's reason. An operator's own disconnect is a plain disconnection.
    {
        "trigger": T.REPORT_DISCONNECTED,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "unless": _is_recovering,
        "after": _set(Reason.INSTANCE_DISCONNECTED),
    },
    {
        "trigger": T.REQUEST_DISCONNECT,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.INSTANCE_DISCONNECTED, phone="clear"),
    },
    # Operator recovery. Both leave the instance blocked (never CONNECTED) until a connection
    # event or probe shows a phone; both replace a delivery stall, which the reconnection ends.
    {
        "trigger": T.BEGIN_RESTART,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.RESTARTING),
    },
    {
        "trigger": T.BEGIN_PAIRING,
        "source": [IS.UNKNOWN, IS.SESSION_INCOMPLETE, IS.DEGRADED, IS.DISCONNECTED],
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.PAIRING_IN_PROGRESS, phone="clear"),
    },
    # Gateway trouble says nothing about the session: keep the last known phone, never flip to
    # DISCONNECTED, but stop trusting it. A delivery stall is not lifted by a gateway blip: its
    # reason stays, so the next healthy probe cannot quietly re-open sends.
    {
        "trigger": T.REPORT_GATEWAY_FAILURE,
        "source": ANY,
        "dest": IS.DEGRADED,
        "unless": _is_stalled,
        "after": _set(Reason.TIMEOUT_OR_GATEWAY),
    },
    {
        "trigger": T.REPORT_TOKEN_INVALID,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.TOKEN_INVALID),
    },
    {
        "trigger": T.REPORT_NOT_FOUND,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.INSTANCE_NOT_FOUND),
    },
    # N messages stuck in SENT with no delivery between them: the "Aguardando mensagem" failure
    # the provider never reports.
    {
        "trigger": T.REPORT_DELIVERY_STALLED,
        "source": IS.CONNECTED,
        "dest": IS.DEGRADED,
        "after": _set(Reason.DELIVERY_STALLED),
    },
    {
        "trigger": T.REPORT_DELIVERY_RESUMED,
        "source": IS.DEGRADED,
        "dest": IS.CONNECTED,
        "conditions": _is_stalled,
        "after": _set(Reason.PHONE_CONFIRMED),
    },
    # An operator's explicit clear (audited with who asked): only a delivery stall, nothing else
    # that blocks sends; the stall evidence starts afresh from the clear.
    {
        "trigger": T.CLEAR_STALL,
        "source": IS.DEGRADED,
        "dest": IS.CONNECTED,
        "conditions": _is_stalled,
        "after": _set(Reason.PHONE_CONFIRMED),
    },
]

INSTANCE_MACHINE = Machine(
    model=None,
    states=list(InstanceState),
    transitions=INSTANCE_TRANSITIONS,
    initial=None,
    auto_transitions=False,
    send_event=True,
)


@dataclass(frozen=True, slots=True)
class InstanceDecision:
    from_state: InstanceState
    from_reason: str
    to_state: InstanceState
    reason: str
    phone: str | None
    applied: bool

    @property
    def changed(self) -> bool:
        """A change worth recording: a new state, or the same state for a new reason."""
        return self.applied and (self.from_state != self.to_state or self.reason != self.from_reason)


def decide_instance(
    state: InstanceState, reason: str, phone: str | None, trigger: InstanceTrigger, *, new_phone: str | None = None
) -> InstanceDecision:
    """Runs an instance trigger. A refused trigger leaves everything as it was.

    The guards read only the state, whether the reason is DELIVERY_STALLED (or a recovery's) and whether a phone
    came with the signal, so the machine's verdict is computed once per such case and remembered;
    the phone itself is then kept, taken or cleared as that verdict says.
    """
    new_phone = e164_phone(new_phone)  # the one phone rule: anything else is "connected without a phone"
    has_phone = new_phone is not None
    kind = "stalled" if reason == Reason.DELIVERY_STALLED else "recovering" if reason in RECOVERY_REASONS else ""
    applied, to_state, to_reason, phone_action = _instance_verdict(state, kind, has_phone, trigger)
    if not applied:
        return InstanceDecision(state, reason, state, reason, phone, applied=False)
    resulting_phone = {"keep": phone, "take": new_phone, "clear": None}[phone_action]
    return InstanceDecision(state, reason, to_state, to_reason or reason, resulting_phone, True)


_KEPT, _TAKEN = "\x00kept", "\x00taken"


@functools.cache
def _instance_verdict(
    state: InstanceState, kind: str, has_phone: bool, trigger: InstanceTrigger
) -> tuple[bool, InstanceState, str, str]:
    reason = {"stalled": Reason.DELIVERY_STALLED.value, "recovering": Reason.RESTARTING.value}.get(kind, "\x00other")
    model = _InstanceModel(state, reason, _KEPT)
    try:
        ok = INSTANCE_MACHINE.events[trigger].trigger(model, phone=_TAKEN if has_phone else None)
    except MachineError:
        ok = False
    if not ok:
        return False, state, "", "keep"
    action = "keep" if model.phone == _KEPT else "take" if model.phone == _TAKEN else "clear"
    new_reason = "" if model.reason == reason else str(model.reason)
    return True, InstanceState(model.state), new_reason, action


def probe_trigger(outcome: ProbeOutcome) -> InstanceTrigger:
    """The one mapping from a status probe to the instance machine, for every caller."""
    if outcome.failure is Reason.TOKEN_INVALID:
        return T.REPORT_TOKEN_INVALID
    if outcome.failure is Reason.INSTANCE_NOT_FOUND:
        return T.REPORT_NOT_FOUND
    if outcome.failure is not None or outcome.connected is None:
        return T.REPORT_GATEWAY_FAILURE
    return T.REPORT_CONNECTED if outcome.connected else T.REPORT_DISCONNECTED
