"""The two state machines, each defined once per process.

`transitions` is used the "static" way (its FAQ's memory-footprint recipe): one Machine with
model=None, triggered on lightweight slot objects through `machine.events[name].trigger(model)`.
No Machine and no add_model per message: that costs ~200 µs and memory per object
(pytransitions/transitions#146, #379, #434).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from transitions import EventData, Machine, MachineError

from statemachine.domain import InstanceState, MessageState, ProbeOutcome, Reason

# --- message ---------------------------------------------------------------------------------

MESSAGE_RANK: dict[MessageState, int] = {
    MessageState.PENDING: 0,
    MessageState.QUEUED: 0,
    MessageState.SENT: 1,
    MessageState.DELIVERED: 2,
    MessageState.READ: 3,
    MessageState.PLAYED: 4,
}

# Provider status words (and WhatsApp ack numbers) → the message trigger they fire.
STATUS_TRIGGER: dict[MessageState, str] = {
    MessageState.SENT: "confirm_sent",
    MessageState.DELIVERED: "deliver",
    MessageState.READ: "read",
    MessageState.PLAYED: "play",
    MessageState.FAILED: "fail",
}

S = MessageState
MESSAGE_TRANSITIONS: list[dict[str, object]] = [
    # The provider accepted the message and gave its id.
    {"trigger": "accept", "source": S.PENDING, "dest": S.SENT},
    # W-API only queued it (an `insertedId`, no message id): not sent, and never SENT from here
    # without the real id (the delivery webhook that names both).
    {"trigger": "queue", "source": S.PENDING, "dest": S.QUEUED},
    {"trigger": "leave_queue", "source": S.QUEUED, "dest": S.SENT},
    # Blocked by preflight, refused or timed out at the provider; or a provider "failed" status.
    {"trigger": "fail", "source": [S.PENDING, S.QUEUED, S.SENT], "dest": S.FAILED},
    # A provider "sent" (server ack) status on a message already SENT: nothing to move.
    {"trigger": "confirm_sent", "source": S.SENT, "dest": None},
    {"trigger": "deliver", "source": S.SENT, "dest": S.DELIVERED},
    # READ may arrive without DELIVERED.
    {"trigger": "read", "source": [S.SENT, S.DELIVERED], "dest": S.READ},
    {"trigger": "play", "source": [S.SENT, S.DELIVERED, S.READ], "dest": S.PLAYED},
    # Only through RetryMessage.
    {"trigger": "retry", "source": S.FAILED, "dest": S.PENDING},
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


def decide_message(state: MessageState, trigger: str) -> MessageDecision:
    """Runs `trigger` on a message in `state`. Refused moves are recorded, never applied.

    Forward-only falls out of the table: a DELIVERED after READ has no transition, so the
    message stays READ and the caller records the event as not applied (STALE_STATUS).
    Message transitions have no guards, so each (state, trigger) outcome is computed once by the
    machine and remembered: the hot path pays a dict lookup, not a trigger dispatch.
    """
    return _decide_message(state, trigger)


@functools.cache
def _decide_message(state: MessageState, trigger: str) -> MessageDecision:
    model = _MessageModel(state)
    try:
        MESSAGE_MACHINE.events[trigger].trigger(model)
    except MachineError:
        return MessageDecision(state, state, applied=False)
    return MessageDecision(state, MessageState(model.state), applied=True)


def decide_status(state: MessageState, status: MessageState) -> MessageDecision:
    """A provider status report for a message in `state`."""
    return decide_message(state, STATUS_TRIGGER[status])


def can_message(state: MessageState, trigger: str) -> bool:
    return bool(MESSAGE_MACHINE.get_transitions(trigger, source=state))


# --- instance --------------------------------------------------------------------------------


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
ANY = list(InstanceState)
INSTANCE_TRANSITIONS: list[dict[str, object]] = [
    # "Connected" counts only with a strong signal: a phone number / me.id. The same trigger
    # serves webhook, probe and registration, so no path can report CONNECTED without a phone.
    {
        "trigger": "report_connected",
        "source": ANY,
        "dest": IS.CONNECTED,
        "conditions": _has_phone,
        "unless": _is_stalled,
        "after": _set(Reason.PHONE_CONFIRMED, phone="take"),
    },
    {
        "trigger": "report_connected",
        "source": ANY,
        "dest": IS.SESSION_INCOMPLETE,
        "unless": [_has_phone, _is_recovering],
        "after": _set(Reason.SESSION_INCOMPLETE, phone="clear"),
    },
    # A connection *event* (the session was re-established) also clears a delivery stall; a
    # routine probe saying "connected" does not: a silently stalled session probes healthy.
    {
        "trigger": "report_reconnected",
        "source": ANY,
        "dest": IS.CONNECTED,
        "conditions": _has_phone,
        "after": _set(Reason.PHONE_CONFIRMED, phone="take"),
    },
    {
        "trigger": "report_reconnected",
        "source": ANY,
        "dest": IS.SESSION_INCOMPLETE,
        "unless": [_has_phone, _is_recovering],
        "after": _set(Reason.SESSION_INCOMPLETE, phone="clear"),
    },
    # The session going down (and a QR waiting) is what a restart or pairing looks like half-way:
    # it keeps the recovery's reason. An operator's own disconnect is a plain disconnection.
    {
        "trigger": "report_disconnected",
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "unless": _is_recovering,
        "after": _set(Reason.INSTANCE_DISCONNECTED),
    },
    {
        "trigger": "request_disconnect",
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.INSTANCE_DISCONNECTED, phone="clear"),
    },
    # Operator recovery. Both leave the instance blocked (never CONNECTED) until a connection
    # event or probe shows a phone; both replace a delivery stall, which the reconnection ends.
    {
        "trigger": "begin_restart",
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.RESTARTING),
    },
    {
        "trigger": "begin_pairing",
        "source": [IS.UNKNOWN, IS.SESSION_INCOMPLETE, IS.DEGRADED, IS.DISCONNECTED],
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.PAIRING_IN_PROGRESS, phone="clear"),
    },
    # Gateway trouble says nothing about the session: keep the last known phone, never flip to
    # DISCONNECTED, but stop trusting it. A delivery stall is not lifted by a gateway blip: its
    # reason stays, so the next healthy probe cannot quietly re-open sends.
    {
        "trigger": "report_gateway_failure",
        "source": ANY,
        "dest": IS.DEGRADED,
        "unless": _is_stalled,
        "after": _set(Reason.TIMEOUT_OR_GATEWAY),
    },
    {
        "trigger": "report_token_invalid",
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.TOKEN_INVALID),
    },
    {
        "trigger": "report_not_found",
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.INSTANCE_NOT_FOUND),
    },
    # N messages stuck in SENT with no delivery between them: the "Aguardando mensagem" failure
    # the provider never reports.
    {
        "trigger": "report_delivery_stalled",
        "source": IS.CONNECTED,
        "dest": IS.DEGRADED,
        "after": _set(Reason.DELIVERY_STALLED),
    },
    {
        "trigger": "report_delivery_resumed",
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
    state: InstanceState, reason: str, phone: str | None, trigger: str, *, new_phone: str | None = None
) -> InstanceDecision:
    """Runs an instance trigger. A refused trigger leaves everything as it was.

    The guards read only the state, whether the reason is DELIVERY_STALLED (or a recovery's) and whether a phone
    came with the signal, so the machine's verdict is computed once per such case and remembered;
    the phone itself is then kept, taken or cleared as that verdict says.
    """
    has_phone = isinstance(new_phone, str) and bool(new_phone.strip())
    kind = "stalled" if reason == Reason.DELIVERY_STALLED else "recovering" if reason in RECOVERY_REASONS else ""
    applied, to_state, to_reason, phone_action = _instance_verdict(state, kind, has_phone, trigger)
    if not applied:
        return InstanceDecision(state, reason, state, reason, phone, applied=False)
    resulting_phone = {"keep": phone, "take": new_phone, "clear": None}[phone_action]
    return InstanceDecision(state, reason, to_state, to_reason or reason, resulting_phone, True)


_KEPT, _TAKEN = "\x00kept", "\x00taken"


@functools.cache
def _instance_verdict(
    state: InstanceState, kind: str, has_phone: bool, trigger: str
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


def probe_trigger(outcome: ProbeOutcome) -> str:
    """The one mapping from a status probe to the instance machine, for every caller."""
    if outcome.failure is Reason.TOKEN_INVALID:
        return "report_token_invalid"
    if outcome.failure is Reason.INSTANCE_NOT_FOUND:
        return "report_not_found"
    if outcome.failure is not None or outcome.connected is None:
        return "report_gateway_failure"
    return "report_connected" if outcome.connected else "report_disconnected"
