"""Recovery through the one instance machine, the next-step guidance, and the terminal QR."""

from __future__ import annotations

import io

import pytest
import segno

from services.cli.terminal_qr import NotAQrImage, qr_modules, render
from services.i18n import next_step
from statemachine.domain import InstanceState, MessageKind, Plan, Reason
from statemachine.instance_machine import InstanceTrigger, decide_instance
from statemachine.preflight import block_reason

IS = InstanceState


@pytest.mark.parametrize("state", [IS.UNKNOWN, IS.SESSION_INCOMPLETE, IS.DEGRADED, IS.DISCONNECTED])
def test_pairing_starts_from_any_unhealthy_state(state: InstanceState) -> None:
    d = decide_instance(state, "SESSION_INCOMPLETE", "5511999990000", InstanceTrigger("begin_pairing"))
    assert (d.applied, d.to_state, d.reason, d.phone) == (True, IS.DISCONNECTED, "PAIRING_IN_PROGRESS", None)


def test_pairing_is_refused_on_a_connected_instance() -> None:
    d = decide_instance(IS.CONNECTED, "PHONE_CONFIRMED", "5511999990000", InstanceTrigger("begin_pairing"))
    assert (d.applied, d.to_state, d.phone) == (False, IS.CONNECTED, "5511999990000")


@pytest.mark.parametrize("reason", ["PAIRING_IN_PROGRESS", "RESTARTING"])
@pytest.mark.parametrize("trigger", ["report_connected", "report_reconnected", "report_disconnected"])
def test_a_recovery_in_progress_stays_visible_until_a_phone_shows(reason: str, trigger: str) -> None:
    d = decide_instance(IS.DISCONNECTED, reason, None, InstanceTrigger(trigger))
    assert (d.to_state, d.reason, d.changed) == (IS.DISCONNECTED, reason, False)
    done = decide_instance(
        IS.DISCONNECTED, reason, None, InstanceTrigger("report_reconnected"), new_phone="5515981121710"
    )
    assert (done.to_state, done.reason, done.phone) == (IS.CONNECTED, "PHONE_CONFIRMED", "5515981121710")


def test_restart_replaces_a_stall_and_the_reconnection_ends_it() -> None:
    stalled = decide_instance(IS.DEGRADED, "DELIVERY_STALLED", "5511999990000", InstanceTrigger("begin_restart"))
    assert (stalled.to_state, stalled.reason) == (IS.DISCONNECTED, "RESTARTING")
    probe = decide_instance(
        IS.DISCONNECTED, "RESTARTING", "5511999990000", InstanceTrigger("report_connected"), new_phone="5511999990000"
    )
    assert probe.to_state is IS.CONNECTED


def test_an_operator_disconnect_is_a_plain_disconnection_even_while_pairing() -> None:
    d = decide_instance(IS.DISCONNECTED, "PAIRING_IN_PROGRESS", None, InstanceTrigger("request_disconnect"))
    assert (d.to_state, d.reason) == (IS.DISCONNECTED, "INSTANCE_DISCONNECTED")


def test_sends_are_blocked_with_the_recovery_reason() -> None:
    assert block_reason(IS.DISCONNECTED, "RESTARTING", Plan.PRO, MessageKind.TEXT) is Reason.RESTARTING
    assert (
        block_reason(IS.DISCONNECTED, "PAIRING_IN_PROGRESS", Plan.PRO, MessageKind.TEXT) is Reason.PAIRING_IN_PROGRESS
    )


def test_next_step_disappears_once_connected() -> None:
    assert next_step(IS.CONNECTED, "PHONE_CONFIRMED") == ""
    assert "código de pareamento" in next_step(IS.SESSION_INCOMPLETE, "SESSION_INCOMPLETE")
    assert "pairing code" in next_step(IS.SESSION_INCOMPLETE, "SESSION_INCOMPLETE", "en")
    assert "restart" in next_step(IS.DEGRADED, "DELIVERY_STALLED", "en")


@pytest.mark.parametrize(("scale", "border"), [(1, 0), (4, 4), (7, 2)])
def test_terminal_qr_reads_back_the_modules_of_any_scale(scale: int, border: int) -> None:
    qr = segno.make("2@abc,def,123", error="l", micro=False)
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=scale, border=border)
    expected = [[bool(cell) for cell in row] for row in qr.matrix]
    assert qr_modules(buffer.getvalue()) == expected
    lines = render(buffer.getvalue()).splitlines()
    assert len(lines) == (len(expected) + 4 + 1) // 2
    assert {len(line) for line in lines} == {len(expected) + 4}


def test_terminal_qr_refuses_what_is_not_a_qr_png() -> None:
    with pytest.raises(NotAQrImage):
        render(b"not a png")


def test_an_operator_clear_lifts_only_a_delivery_stall() -> None:
    cleared = decide_instance(IS.DEGRADED, "DELIVERY_STALLED", "5511999990000", InstanceTrigger("clear_stall"))
    assert (cleared.applied, cleared.to_state, cleared.reason, cleared.phone) == (
        True,
        IS.CONNECTED,
        "PHONE_CONFIRMED",
        "5511999990000",
    )
    # Nothing else that blocks sends is the operator's to wave through.
    for state, reason in (
        (IS.DEGRADED, "TIMEOUT_OR_GATEWAY"),
        (IS.SESSION_INCOMPLETE, "SESSION_INCOMPLETE"),
        (IS.DISCONNECTED, "RESTARTING"),
        (IS.CONNECTED, "PHONE_CONFIRMED"),
    ):
        d = decide_instance(state, reason, None, InstanceTrigger("clear_stall"))
        assert (d.applied, d.to_state, d.reason) == (False, state, reason)
    # A probe that merely says "connected" still never clears a stall.
    probe = decide_instance(
        IS.DEGRADED, "DELIVERY_STALLED", "5511999990000", InstanceTrigger("report_connected"), new_phone="5511999990000"
    )
    assert (probe.to_state, probe.reason) == (IS.DEGRADED, "DELIVERY_STALLED")
