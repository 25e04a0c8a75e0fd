"""The background prober keeps stored health fresh on its own, and sends follow it."""

from __future__ import annotations

import grpc

from tests.e2e.conftest import StackFactory
from tests.e2e.stack import CONNECTED, DEGRADED, PHONE, READ, SESSION_INCOMPLETE, text_request


async def test_background_prober_refreshes_health_and_sends_follow(make_stack: StackFactory) -> None:
    stack = await make_stack(probe_interval=0.2)
    instance = "PROBED-1"
    registered = await stack.add_instance(instance, "healthy")
    assert registered.state == CONNECTED
    first_check = registered.checked_at.ToDatetime()

    # Nobody asks: checked_at still advances.
    await stack.wait_health(instance, lambda h: h.checked_at.ToDatetime() > first_check, "checked_at advances")

    # The session loses its phone at W-API: the prober notices, and the next send is blocked.
    stack.sim.set_behaviour(instance, "session_incomplete")
    h = await stack.wait_health(instance, lambda h: h.state == SESSION_INCOMPLETE, "SESSION_INCOMPLETE")
    assert (h.reason, h.phone_number, h.can_send) == ("SESSION_INCOMPLETE", "", False)
    refused = await stack.refused(text_request(instance, key="while-incomplete"))
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_INCOMPLETE")
    assert stack.sim.sends(instance) == []

    # Gateway trouble: degraded, the phone seen last is kept.
    stack.sim.set_behaviour(instance, "healthy")
    await stack.wait_health(instance, lambda h: h.state == CONNECTED, "CONNECTED again")
    stack.sim.set_behaviour(instance, "gateway_error")
    h = await stack.wait_health(instance, lambda h: h.state == DEGRADED, "DEGRADED on gateway trouble")
    assert (h.reason, h.phone_number) == ("TIMEOUT_OR_GATEWAY", PHONE)

    # Recovered: sends go out again and are really delivered.
    stack.sim.set_behaviour(instance, "healthy")
    h = await stack.wait_health(instance, lambda h: h.state == CONNECTED, "CONNECTED after recovery")
    assert h.phone_number == PHONE
    sent = await stack.submit(text_request(instance, key="after-recovery"))
    await stack.wait_state(sent.id, READ)
    await stack.audit()
