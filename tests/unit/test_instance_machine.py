"""Instance state machine: every trigger from every state, probe mapping, and a property test.

The core promise (docs/wapi-contract.md, "What the replaced system got wrong", items 1 and 5): a provider
that says "connected" without a phone number is an *incomplete session*, never CONNECTED.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine.domain import InstanceState, ProbeOutcome, Reason
from statemachine.instance_machine import InstanceDecision, InstanceTrigger, decide_instance, probe_trigger

IS = InstanceState
OLD = "5511999990000"
NEW = "5515981121710"


@dataclass(frozen=True)
class Start:
    name: str
    state: InstanceState
    reason: str
    phone: str | None


# Every state, and every reason a state can carry that changes the rules.
STARTS = [
    Start("unknown", IS.UNKNOWN, Reason.REGISTERED, None),
    Start("unknown-no-reason", IS.UNKNOWN, "", None),
    Start("connected", IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD),
    Start("incomplete", IS.SESSION_INCOMPLETE, Reason.SESSION_INCOMPLETE, None),
    Start("degraded-gateway", IS.DEGRADED, Reason.TIMEOUT_OR_GATEWAY, OLD),
    Start("degraded-stalled", IS.DEGRADED, Reason.DELIVERY_STALLED, OLD),
    Start("disconnected", IS.DISCONNECTED, Reason.INSTANCE_DISCONNECTED, OLD),
    Start("token-invalid", IS.DISCONNECTED, Reason.TOKEN_INVALID, OLD),
    Start("not-found", IS.DISCONNECTED, Reason.INSTANCE_NOT_FOUND, None),
]
IDS = [s.name for s in STARTS]
STALLED = next(s for s in STARTS if s.name == "degraded-stalled")
NOT_STALLED = [s for s in STARTS if s is not STALLED]


def run(start: Start, trigger: str, new_phone: str | None = None) -> InstanceDecision:
    return decide_instance(start.state, start.reason, start.phone, InstanceTrigger(trigger), new_phone=new_phone)


def assert_refused(start: Start, decision: InstanceDecision) -> None:
    assert decision.applied is False
    assert decision.changed is False
    assert (decision.to_state, decision.reason, decision.phone) == (start.state, start.reason, start.phone)


def test_every_state_is_covered_as_a_start() -> None:
    assert {s.state for s in STARTS} == set(InstanceState)


# --- report_connected ---------------------------------------------------------------------------


@pytest.mark.parametrize("start", NOT_STALLED, ids=[s.name for s in NOT_STALLED])
def test_report_connected_with_phone_connects_and_stores_phone(start: Start) -> None:
    d = run(start, "report_connected", NEW)
    assert d.applied is True
    assert d.to_state is IS.CONNECTED
    assert d.reason == Reason.PHONE_CONFIRMED
    assert d.phone == NEW
    assert (d.from_state, d.from_reason) == (start.state, start.reason)


@pytest.mark.parametrize("no_phone", [None, ""], ids=["None", "empty"])
@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_connected_without_phone_is_session_incomplete_from_every_state(
    start: Start, no_phone: str | None
) -> None:
    d = run(start, "report_connected", no_phone)
    assert d.applied is True
    assert d.to_state is IS.SESSION_INCOMPLETE
    assert d.reason == Reason.SESSION_INCOMPLETE
    assert d.phone is None  # the old phone is not kept as if the session still had it


def test_report_connected_without_phone_defaults_to_no_phone() -> None:
    """Calling without new_phone at all is the same as a provider answer without a phone."""
    d = decide_instance(IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD, InstanceTrigger("report_connected"))
    assert (d.to_state, d.reason, d.phone) == (IS.SESSION_INCOMPLETE, Reason.SESSION_INCOMPLETE, None)


def test_report_connected_with_phone_does_not_clear_a_delivery_stall() -> None:
    """A silently stalled session probes healthy: only a delivery or a reconnect event clears it."""
    d = run(STALLED, "report_connected", NEW)
    assert_refused(STALLED, d)
    assert d.to_state is IS.DEGRADED
    assert d.reason == Reason.DELIVERY_STALLED
    assert d.phone == OLD  # the refused probe does not overwrite the phone either


def test_report_connected_with_phone_does_clear_a_gateway_degradation() -> None:
    start = next(s for s in STARTS if s.name == "degraded-gateway")
    d = run(start, "report_connected", OLD)
    assert (d.applied, d.to_state, d.reason, d.phone) == (True, IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD)


def test_connected_instance_with_a_new_phone_takes_the_new_phone() -> None:
    start = next(s for s in STARTS if s.name == "connected")
    d = run(start, "report_connected", NEW)
    assert (d.to_state, d.phone) == (IS.CONNECTED, NEW)


# --- report_reconnected (a connection webhook) --------------------------------------------------


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_reconnected_with_phone_connects_from_every_state(start: Start) -> None:
    d = run(start, "report_reconnected", NEW)
    assert (d.applied, d.to_state, d.reason, d.phone) == (True, IS.CONNECTED, Reason.PHONE_CONFIRMED, NEW)


def test_report_reconnected_clears_a_delivery_stall() -> None:
    d = run(STALLED, "report_reconnected", OLD)
    assert (d.to_state, d.reason) == (IS.CONNECTED, Reason.PHONE_CONFIRMED)
    assert d.changed is True


@pytest.mark.parametrize("no_phone", [None, ""], ids=["None", "empty"])
@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_reconnected_without_phone_is_session_incomplete(start: Start, no_phone: str | None) -> None:
    """docs/wapi-contract.md, replaced-system item 5: the connection webhook must look at connectedPhone."""
    d = run(start, "report_reconnected", no_phone)
    assert d.applied is True
    assert (d.to_state, d.reason, d.phone) == (IS.SESSION_INCOMPLETE, Reason.SESSION_INCOMPLETE, None)


# --- failures -----------------------------------------------------------------------------------


NOT_STALLED = [s for s in STARTS if s is not STALLED]


@pytest.mark.parametrize("start", NOT_STALLED, ids=[s.name for s in NOT_STALLED])
def test_gateway_failure_degrades_from_every_state_and_keeps_the_phone(start: Start) -> None:
    d = run(start, "report_gateway_failure", NEW)  # a new_phone passed along is ignored
    assert d.applied is True
    assert d.to_state is IS.DEGRADED
    assert d.reason == Reason.TIMEOUT_OR_GATEWAY
    assert d.phone == start.phone


def test_gateway_failure_keeps_a_delivery_stall_and_its_reason() -> None:
    d = run(STALLED, "report_gateway_failure", NEW)
    assert (d.to_state, d.reason, d.phone, d.changed) == (IS.DEGRADED, Reason.DELIVERY_STALLED, STALLED.phone, False)


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_disconnected_from_every_state(start: Start) -> None:
    d = run(start, "report_disconnected")
    assert (d.applied, d.to_state, d.reason) == (True, IS.DISCONNECTED, Reason.INSTANCE_DISCONNECTED)


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_token_invalid_from_every_state(start: Start) -> None:
    d = run(start, "report_token_invalid")
    assert (d.applied, d.to_state, d.reason) == (True, IS.DISCONNECTED, Reason.TOKEN_INVALID)


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_not_found_from_every_state(start: Start) -> None:
    d = run(start, "report_not_found")
    assert (d.applied, d.to_state, d.reason) == (True, IS.DISCONNECTED, Reason.INSTANCE_NOT_FOUND)


# --- delivery stall -----------------------------------------------------------------------------


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_delivery_stalled_only_from_connected(start: Start) -> None:
    d = run(start, "report_delivery_stalled")
    if start.state is IS.CONNECTED:
        assert (d.applied, d.to_state, d.reason, d.phone) == (True, IS.DEGRADED, Reason.DELIVERY_STALLED, OLD)
    else:
        assert_refused(start, d)


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_report_delivery_resumed_only_from_a_delivery_stall(start: Start) -> None:
    d = run(start, "report_delivery_resumed")
    if start is STALLED:
        assert (d.applied, d.to_state, d.reason, d.phone) == (True, IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD)
    else:
        assert_refused(start, d)


def test_stall_then_resume_round_trip() -> None:
    a = decide_instance(IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD, InstanceTrigger("report_delivery_stalled"))
    b = decide_instance(a.to_state, a.reason, a.phone, InstanceTrigger("report_delivery_resumed"))
    assert (a.to_state, a.reason) == (IS.DEGRADED, Reason.DELIVERY_STALLED)
    assert (b.to_state, b.reason, b.phone) == (IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD)


def test_delivery_stall_survives_a_gateway_blip_followed_by_a_healthy_probe() -> None:
    a = decide_instance(IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD, InstanceTrigger("report_delivery_stalled"))
    b = decide_instance(a.to_state, a.reason, a.phone, InstanceTrigger("report_gateway_failure"))
    c = decide_instance(b.to_state, b.reason, b.phone, InstanceTrigger("report_connected"), new_phone=OLD)
    assert c.to_state is not IS.CONNECTED


# --- changed ------------------------------------------------------------------------------------


def test_changed_false_when_state_and_reason_are_the_same() -> None:
    d = decide_instance(IS.DEGRADED, Reason.TIMEOUT_OR_GATEWAY, OLD, InstanceTrigger("report_gateway_failure"))
    assert d.applied is True
    assert d.changed is False


def test_changed_false_for_a_repeated_healthy_probe_even_with_a_new_phone() -> None:
    d = decide_instance(IS.CONNECTED, Reason.PHONE_CONFIRMED, OLD, InstanceTrigger("report_connected"), new_phone=NEW)
    assert (d.applied, d.phone) == (True, NEW)
    assert d.changed is False


def test_changed_true_for_same_state_new_reason() -> None:
    d = decide_instance(IS.DISCONNECTED, Reason.INSTANCE_DISCONNECTED, OLD, InstanceTrigger("report_token_invalid"))
    assert d.to_state is d.from_state
    assert d.changed is True


def test_changed_true_for_a_new_state() -> None:
    d = decide_instance(IS.UNKNOWN, Reason.REGISTERED, None, InstanceTrigger("report_connected"), new_phone=NEW)
    assert d.changed is True


def test_changed_false_when_refused() -> None:
    d = decide_instance(IS.UNKNOWN, Reason.REGISTERED, None, InstanceTrigger("report_delivery_stalled"))
    assert (d.applied, d.changed) == (False, False)


def test_changed_is_false_for_an_unapplied_decision_even_if_states_differ() -> None:
    d = InstanceDecision(IS.UNKNOWN, "", IS.CONNECTED, Reason.PHONE_CONFIRMED, NEW, applied=False)
    assert d.changed is False


# --- probes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "trigger"),
    [
        (ProbeOutcome(connected=True, phone=OLD), "report_connected"),
        (ProbeOutcome(connected=True, phone=None), "report_connected"),
        (ProbeOutcome(connected=True, phone=""), "report_connected"),
        (ProbeOutcome(connected=False), "report_disconnected"),
        (ProbeOutcome(connected=False, phone=OLD), "report_disconnected"),
        (ProbeOutcome(connected=None), "report_gateway_failure"),
        (ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY), "report_gateway_failure"),
        (ProbeOutcome(connected=None, failure=Reason.PROVIDER_UNAVAILABLE), "report_gateway_failure"),
        (ProbeOutcome(connected=None, failure=Reason.TOKEN_INVALID), "report_token_invalid"),
        (ProbeOutcome(connected=None, failure=Reason.INSTANCE_NOT_FOUND), "report_not_found"),
        # A failure always wins over a contradictory `connected`.
        (ProbeOutcome(connected=True, phone=OLD, failure=Reason.TIMEOUT_OR_GATEWAY), "report_gateway_failure"),
        (ProbeOutcome(connected=True, phone=OLD, failure=Reason.TOKEN_INVALID), "report_token_invalid"),
        (ProbeOutcome(connected=False, failure=Reason.INSTANCE_NOT_FOUND), "report_not_found"),
    ],
    ids=[
        "connected-phone",
        "connected-no-phone",
        "connected-empty-phone",
        "disconnected",
        "disconnected-phone",
        "unknown",
        "timeout",
        "unavailable",
        "token-invalid",
        "not-found",
        "failure-beats-connected",
        "token-beats-connected",
        "not-found-beats-disconnected",
    ],
)
def test_probe_trigger(outcome: ProbeOutcome, trigger: str) -> None:
    assert probe_trigger(outcome) == trigger


@pytest.mark.parametrize("start", STARTS, ids=IDS)
def test_probe_connected_without_phone_is_never_connected(start: Start) -> None:
    """replaced-system item 1: a status answer {"connected": true} with no phone is an incomplete session."""
    outcome = ProbeOutcome(connected=True, phone=None)
    d = run(start, probe_trigger(outcome), outcome.phone)
    assert d.to_state is IS.SESSION_INCOMPLETE


@pytest.mark.parametrize("start", NOT_STALLED, ids=[s.name for s in NOT_STALLED])
def test_probe_timeout_never_disconnects(start: Start) -> None:
    outcome = ProbeOutcome(connected=None, failure=Reason.TIMEOUT_OR_GATEWAY)
    d = run(start, probe_trigger(outcome), outcome.phone)
    assert (d.to_state, d.reason, d.phone) == (IS.DEGRADED, Reason.TIMEOUT_OR_GATEWAY, start.phone)


# --- property -----------------------------------------------------------------------------------

TRIGGERS = [
    "report_connected",
    "report_reconnected",
    "report_disconnected",
    "report_gateway_failure",
    "report_token_invalid",
    "report_not_found",
    "report_delivery_stalled",
    "report_delivery_resumed",
]
CONNECT_TRIGGERS = {"report_connected", "report_reconnected"}
PHONES = st.sampled_from([None, "", OLD, NEW])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TRIGGERS), PHONES), max_size=30))
def test_connected_only_after_a_connect_with_a_phone(steps: list[tuple[str, str | None]]) -> None:
    state, reason, phone = IS.UNKNOWN, str(Reason.REGISTERED), None
    last_connect_phone: str | None = None
    for trigger, new_phone in steps:
        d = decide_instance(state, reason, phone, InstanceTrigger(trigger), new_phone=new_phone)
        assert isinstance(d.to_state, InstanceState)
        if not d.applied:
            assert (d.to_state, d.reason, d.phone) == (state, reason, phone)
        elif trigger in CONNECT_TRIGGERS:
            last_connect_phone = new_phone
        state, reason, phone = d.to_state, d.reason, d.phone
        if state is IS.CONNECTED:
            assert last_connect_phone, "CONNECTED without a phone-carrying connect"
            assert phone == last_connect_phone
            assert reason == Reason.PHONE_CONFIRMED
        if state is IS.SESSION_INCOMPLETE:
            assert phone is None
        if reason == Reason.DELIVERY_STALLED:
            assert state is IS.DEGRADED
