"""The instance machine: UNKNOWN, CONNECTED, SESSION_INCOMPLETE, DEGRADED, DISCONNECTED.

Every signal (probe, connection event, send outcome, stall, recovery action) is an enum trigger;
never CONNECTED without a valid phone. Defined once per process, used the same static way as the
message machine (statemachine/message_machine.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from transitions import EventData, Machine, MachineError

from statemachine.domain import InstanceState, ProbeOutcome, Reason
from statemachine.phone import e164_phone


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
    # Provider-specific session signals (statemachine/providers.py).
    REPORT_NEEDS_RESTORE = "report_needs_restore"  # Z-API: "You need to restore the session."
    REPORT_LOGGED_OUT = "report_logged_out"  # Evolution: closed 401/402/403/406, no reconnect
    REPORT_QR_REFUSED = "report_qr_refused"  # Evolution: QR code limit reached
    REPORT_PHONE_OFFLINE = "report_phone_offline"  # Z-API: connected, the smartphone is offline
    REPORT_WAITING_MESSAGE = "report_waiting_message"  # Z-API: an inbound message it could not decrypt


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
    # Provider-specific session signals: each its own reason (and remedy), never CONNECTED.
    {
        "trigger": T.REPORT_NEEDS_RESTORE,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "unless": _is_recovering,
        "after": _set(Reason.SESSION_NEEDS_RESTORE),
    },
    {
        "trigger": T.REPORT_LOGGED_OUT,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.LOGGED_OUT, phone="clear"),
    },
    {
        "trigger": T.REPORT_QR_REFUSED,
        "source": ANY,
        "dest": IS.DISCONNECTED,
        "after": _set(Reason.QR_REFUSED),
    },
    # Connected with a phone whose smartphone is offline: degraded (the provider holds sends).
    {
        "trigger": T.REPORT_PHONE_OFFLINE,
        "source": ANY,
        "dest": IS.DEGRADED,
        "conditions": _has_phone,
        "unless": _is_stalled,
        "after": _set(Reason.PHONE_OFFLINE, phone="take"),
    },
    {
        "trigger": T.REPORT_PHONE_OFFLINE,
        "source": ANY,
        "dest": IS.SESSION_INCOMPLETE,
        "unless": [_has_phone, _is_recovering],
        "after": _set(Reason.SESSION_INCOMPLETE, phone="clear"),
    },
    # Z-API's inbound `waitingMessage: true`: the phone received a message it could not decrypt
    # ("Aguardando mensagem"), direct evidence of a broken session on an instance that still says
    # connected. DEGRADED with its own reason, phone kept; a connection event or probe with a phone
    # brings it back. It says nothing about an instance already down, under recovery or stalled.
    {
        "trigger": T.REPORT_WAITING_MESSAGE,
        "source": [IS.CONNECTED, IS.DEGRADED],
        "dest": IS.DEGRADED,
        "unless": [_is_stalled, _is_recovering],
        "after": _set(Reason.WAITING_FOR_MESSAGE),
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

    @property
    def ends_stall(self) -> bool:
        """It leaves DELIVERY_STALLED (a delivery, a reconnection, an operator's clear, a restart or
        pairing): the stuck-run evidence starts afresh from here (`instances.stall_ended_at`)."""
        return self.changed and self.from_reason == Reason.DELIVERY_STALLED and self.reason != Reason.DELIVERY_STALLED


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
    if outcome.failure in _PROVIDER_SESSION_TRIGGERS:
        return _PROVIDER_SESSION_TRIGGERS[outcome.failure]
    if outcome.failure is not None or outcome.connected is None:
        return T.REPORT_GATEWAY_FAILURE
    return T.REPORT_CONNECTED if outcome.connected else T.REPORT_DISCONNECTED


_PROVIDER_SESSION_TRIGGERS: dict[Reason | None, InstanceTrigger] = {
    Reason.SESSION_NEEDS_RESTORE: T.REPORT_NEEDS_RESTORE,
    Reason.LOGGED_OUT: T.REPORT_LOGGED_OUT,
    Reason.QR_REFUSED: T.REPORT_QR_REFUSED,
    Reason.PHONE_OFFLINE: T.REPORT_PHONE_OFFLINE,
}


def inbound_event_trigger(reason: str) -> InstanceTrigger | None:
    """An inbound message's session signal (the event's reason) → its trigger, or None: most
    inbound messages say nothing about the session."""
    return T.REPORT_WAITING_MESSAGE if reason == Reason.WAITING_FOR_MESSAGE else None


def connection_event_trigger(connected: bool | None, reason: str = "") -> InstanceTrigger:
    """A connection webhook → its trigger: a provider's own session reason (logged out, QR
    refused, needs restore) when it named one, else reconnected / disconnected."""
    special = _PROVIDER_SESSION_TRIGGERS.get(Reason(reason)) if reason in Reason.__members__ else None
    if special is not None:
        return special
    return T.REPORT_RECONNECTED if connected else T.REPORT_DISCONNECTED
