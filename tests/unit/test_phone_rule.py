"""One strict phone rule for probe answers, connection webhooks and registration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.wapi.contract import parse_status
from adapters.wapi.webhooks import parse_webhook
from statemachine.domain import InstanceState, Reason
from statemachine.instance_machine import InstanceTrigger, decide_instance, probe_trigger
from statemachine.phone import e164_phone, phone_rejection

GOOD = "5511999990000"
GARBAGE: list[Any] = [
    0,
    "0",
    "1",
    "abc1",
    "+0",
    "0@s.whatsapp.net",
    "00000000",
    "000000000000000",
    "11111111",
    "\u0665\u0665\u0661\u0661\u0669\u0669\u0669\u0669\u0669\u0660\u0660\u0660\u0660",  # Arabic-Indic digits
    "５５１１９９９９９００００",  # fullwidth digits
    "176488829694091@lid",
    "1234567",
    "1234567890123456",
    "55 11 99999 0000",
    "55-11-999990000",
    "5511999990000@g.us",
    -5511999990000,
    True,
    5.5,
    None,
    [],
    {},
    "",
]


@pytest.mark.parametrize(
    ("value", "phone"),
    [
        (GOOD, GOOD),
        ("+" + GOOD, GOOD),
        (int(GOOD), GOOD),
        (f"{GOOD}@s.whatsapp.net", GOOD),
        (f"{GOOD}:12@s.whatsapp.net", GOOD),
        (f"{GOOD}@c.us", GOOD),
        (f"  {GOOD} ", GOOD),
        ("12025550123", "12025550123"),
    ],
)
def test_real_numbers_are_normalised_to_e164_digits(value: Any, phone: str) -> None:
    assert e164_phone(value) == phone
    assert phone_rejection(value) is None


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_is_never_a_phone(value: Any) -> None:
    assert e164_phone(value) is None
    assert phone_rejection(value)


@pytest.mark.parametrize("value", GARBAGE)
@pytest.mark.parametrize("style", ["phone", "me.id", "data.phone", "wid.user"])
def test_probe_connected_with_garbage_phone_is_session_incomplete(value: Any, style: str) -> None:
    body: dict[str, Any] = {"connected": True}
    match style:
        case "phone":
            body["phone"] = value
        case "me.id":
            body["me"] = {"id": value}
        case "data.phone":
            body = {"data": {"connected": True, "phone": value}}
        case "wid.user":
            body["wid"] = {"user": value}
    outcome = parse_status(body)
    assert outcome.connected is True
    assert outcome.phone is None
    decision = decide_instance(InstanceState.UNKNOWN, "", None, probe_trigger(outcome), new_phone=outcome.phone)
    assert (decision.to_state, decision.reason) == (InstanceState.SESSION_INCOMPLETE, Reason.SESSION_INCOMPLETE)


@pytest.mark.parametrize("value", GARBAGE)
def test_connection_webhook_with_garbage_phone_is_session_incomplete(value: Any) -> None:
    body = {"event": "webhookConnected", "instanceId": "INST-1", "connected": True, "connectedPhone": value}
    event = parse_webhook(json.dumps(body).encode())
    assert event.phone is None
    decision = decide_instance(
        InstanceState.CONNECTED, "", GOOD, InstanceTrigger.REPORT_CONNECTED, new_phone=event.phone
    )
    assert decision.to_state is InstanceState.SESSION_INCOMPLETE
    assert decision.phone is None


@pytest.mark.parametrize("value", GARBAGE)
def test_machine_refuses_a_garbage_phone_from_any_caller(value: Any) -> None:
    """Registration and every other caller hand the phone to the machine, which applies the rule too."""
    decision = decide_instance(InstanceState.UNKNOWN, "", None, InstanceTrigger.REPORT_CONNECTED, new_phone=value)
    assert decision.to_state is InstanceState.SESSION_INCOMPLETE


def test_machine_stores_the_normalised_phone() -> None:
    decision = decide_instance(
        InstanceState.UNKNOWN, "", None, InstanceTrigger.REPORT_CONNECTED, new_phone=f"+{GOOD}:3@s.whatsapp.net"
    )
    assert (decision.to_state, decision.phone) == (InstanceState.CONNECTED, GOOD)


@given(st.text(max_size=40) | st.integers() | st.floats() | st.none() | st.booleans())
def test_whatever_is_accepted_is_plausible_e164(value: Any) -> None:
    phone = e164_phone(value)
    if phone is not None:
        assert phone.isascii()
        assert phone.isdigit()
        assert 8 <= len(phone) <= 15
        assert phone[0] != "0"
        assert len(set(phone)) > 1


@given(st.from_regex(r"[1-9][0-9]{7,14}", fullmatch=True).filter(lambda s: len(set(s)) > 1))
def test_every_plausible_number_is_accepted_in_every_spelling(digits: str) -> None:
    for spelling in (digits, "+" + digits, int(digits), f"{digits}@s.whatsapp.net", f"{digits}:7@s.whatsapp.net"):
        assert e164_phone(spelling) == digits
