"""The learned stall test end to end: a healthy phase through the simulator (recipients with their
own confirmation behaviour, W-API's server acks) teaches the instance's history; then the session
silently stalls and is blocked after a handful of sends, with default detection settings and no
false block before. Also: acks as webhookDelivery, an instance without acks (receipts alone), and
a stall whose sends are still acked."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc

from services.app.stall_watch import StallWatch
from tests.e2e.conftest import StackFactory
from tests.e2e.stack import CONNECTED, DEGRADED, SENT, SESSION_INCOMPLETE, Stack, text_request, unbounded
from tests.integration.harness import rich_error

INSTANCE = "LEARN-ZTS923-GEAY6V"
CONFIRMING = [f"55119800000{i:02d}" for i in range(8)]
NEVER = [f"55119900000{i:02d}" for i in range(4)]


async def _stalled_after(stack: Stack, acks: str, stall: str) -> int:
    """A healthy phase (one in three recipients never confirms, the others' receipts take about a
    second; the instance acks within ~20 ms as `acks` says), no false block in it, then the session
    turns `stall`: sends accepted until the block."""
    stack.sim.delivered_after, stack.sim.read_after = 0.8, 1.2
    for phone in NEVER:
        stack.sim.set_recipient(phone, confirms=False)
    assert (await stack.add_instance(INSTANCE, "healthy")).state == CONNECTED
    stack.sim.set_acks(INSTANCE, acks)

    recipients = CONFIRMING + NEVER
    for i in range(48):
        msg = await stack.submit(text_request(INSTANCE, key=f"ok-{i}", to=recipients[i % len(recipients)]))
        assert msg.state == SENT
        await asyncio.sleep(0.1)
    await asyncio.sleep(2.5)  # several assessments of the healthy history
    h = await stack.get_health(INSTANCE)
    assert (h.state, h.can_send) == (CONNECTED, True), "false block during the healthy phase"
    acked = await unbounded(stack.app.store).recent_acks(INSTANCE, datetime.now(UTC) - timedelta(hours=1))
    assert len({a.message_id for a in acked}) == (0 if acks == "none" else 48)  # every send, offline recipients too

    stack.sim.set_behaviour(INSTANCE, stall)
    accepted, refused = 0, None
    for i in range(80):
        try:
            await stack.submit(text_request(INSTANCE, key=f"stall-{i}", to=recipients[i % len(recipients)]))
            accepted += 1
        except grpc.aio.AioRpcError as error:
            refused = error.code()
            break
        await asyncio.sleep(0.2)
    assert refused is grpc.StatusCode.FAILED_PRECONDITION
    h = await stack.get_health(INSTANCE)
    assert (h.state, h.reason) == (DEGRADED, "DELIVERY_STALLED")
    print(f"acks {acks}, {stall}: sends accepted after the stall before the block: {accepted}")
    # A probe that merely says "connected" does not clear it.
    h = await stack.get_health(INSTANCE, refresh=True)
    assert (h.state, h.reason) == (DEGRADED, "DELIVERY_STALLED")
    return accepted


async def test_a_silent_stall_is_blocked_after_a_handful_of_sends_with_defaults(make_stack: StackFactory) -> None:
    """W-API acks every healthy send with a `sent` status; a silent stall acks nothing."""
    stack = await make_stack()  # default detection settings; the sweeper (stuck-run rule) is off
    accepted = await _stalled_after(stack, "status", "silent_stall")
    assert accepted <= 10, accepted  # receipts alone: ~14 here


async def test_webhookdelivery_counts_as_the_ack(make_stack: StackFactory) -> None:
    stack = await make_stack()
    assert await _stalled_after(stack, "delivery", "silent_stall") <= 10


async def test_without_acks_the_silent_stall_is_blocked_on_receipts_alone(make_stack: StackFactory) -> None:
    stack = await make_stack()
    assert await _stalled_after(stack, "none", "silent_stall") <= 20


async def test_a_stall_whose_sends_are_still_acked_is_blocked_on_receipts(make_stack: StackFactory) -> None:
    stack = await make_stack()
    assert await _stalled_after(stack, "status", "acking_stall") <= 40


async def test_a_probe_only_incomplete_session_is_blocked_within_seconds_while_sending(
    make_stack: StackFactory,
) -> None:
    """W-API's status says "connected" but without a phone / me.id, no connection webhook comes and
    sends are still accepted: only the status probe can tell. The background probe round is off
    (probe_interval=0): the probes of a sending instance alone must catch it."""
    stack = await make_stack()
    instance = "PROBE-ZTS923-GEAY6V"
    assert (await stack.add_instance(instance, "healthy")).state == CONNECTED
    for i in range(5):
        await stack.submit(text_request(instance, key=f"ok-{i}", to=CONFIRMING[i % len(CONFIRMING)]))
        await asyncio.sleep(0.2)

    stack.sim.set_behaviour(instance, "session_incomplete")
    started = time.monotonic()
    accepted, refused = 0, None
    while time.monotonic() - started < 30:
        try:
            await stack.submit(text_request(instance, key=f"after-{accepted}", to=CONFIRMING[accepted % 8]))
            accepted += 1
        except grpc.aio.AioRpcError as error:
            refused = rich_error(error)
            break
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - started
    assert refused is not None, "never blocked"
    assert (refused.code, refused.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_INCOMPLETE")
    print(f"probe-only incomplete session blocked after {elapsed:.1f} s ({accepted} sends accepted)")
    assert elapsed <= 10.0, elapsed
    h = await stack.get_health(instance)
    assert (h.state, h.reason, h.phone_number) == (SESSION_INCOMPLETE, "SESSION_INCOMPLETE", "")


async def test_a_restarted_replica_rebuilds_the_ack_model_from_the_stored_events(make_stack: StackFactory) -> None:
    """The acks are read back from the database like the receipts: a fresh stall watch (a restart,
    another replica) learns at once whether the instance acks, and how fast."""
    stack = await make_stack()
    quiet = "NOACK-ZTS923-GEAY6V"
    assert (await stack.add_instance(INSTANCE, "healthy")).state == CONNECTED
    assert (await stack.add_instance(quiet, "healthy")).state == CONNECTED
    stack.sim.set_acks(quiet, "none")
    for i in range(30):
        for instance in (INSTANCE, quiet):
            await stack.submit(text_request(instance, key=f"ok-{i}", to=CONFIRMING[i % len(CONFIRMING)]))
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the last receipts and acks are stored

    fresh = StallWatch(stack.app.store, probe=lambda _instance: asyncio.sleep(0), apply_change=lambda _c: None)
    for instance in (INSTANCE, quiet):
        await fresh.check(instance)
    acking, silent = fresh.model(INSTANCE), fresh.model(quiet)
    assert acking is not None
    assert silent is not None
    assert acking.acks_warmed_up
    assert acking.never_acked_share() < 0.1
    assert (acking.ack_quantile(0.5) or 0.0) < 1.0  # seconds: the simulator acks within ~20 ms
    assert not silent.acks_warmed_up
    verdict = fresh.assessment(quiet)
    assert verdict is not None
    assert verdict.ack_evidence == 0.0  # no acks learned: receipts alone decide, as before
