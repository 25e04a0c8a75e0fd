"""A recipient the provider reports absent is refused at once next time and never feeds stall
detection, end to end against the simulator in each provider's own shape: W-API's in-band send
error, Z-API's send webhook with "Phone number does not exist", Evolution's 400 `exists: false`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from adapters.simulator.dialects import EVOLUTION, ZAPI
from services.api.wapiguard.v1 import common_pb2, recipients_pb2, recipients_pb2_grpc
from tests.e2e.stack import PHONE, Stack, eventually, text_request
from tests.e2e.test_providers import ProviderStack, start_stack, stop_stack, text
from tests.integration.harness import rich_error

ABSENT = "5511900000000"
PRESENT = "5515981121710"


@pytest.fixture(params=[ZAPI, EVOLUTION])
async def pstack(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[ProviderStack]:
    stack = await start_stack(request.param, database_url)
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def refused_reason(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        rich = rich_error(error)
        return rich.code, rich.reason
    raise AssertionError("the send was not refused")


async def test_z_api_and_evolution_failures_teach_the_cache(pstack: ProviderStack) -> None:
    await pstack.add("inst-absent", "healthy")
    pstack.sim.not_on_whatsapp.add(ABSENT)
    if pstack.provider == EVOLUTION:  # refused by the provider itself, in the send's answer
        assert await refused_reason(pstack.send.SendMessage(text("inst-absent", "k1", to=ABSENT))) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_ON_WHATSAPP",
        )
    else:  # queued, then failed by Z-API's send webhook
        sent = await pstack.send.SendMessage(text("inst-absent", "k1", to=ABSENT))
        await pstack.wait_message(sent.id, common_pb2.MESSAGE_STATE_FAILED)
    calls = len(pstack.sim.instances["inst-absent"].sends)
    assert calls == 1

    async def refused_at_once() -> tuple[grpc.StatusCode, str] | None:
        outcome = await refused_reason(pstack.send.SendMessage(text("inst-absent", "k2", to=ABSENT)))
        return outcome if outcome[1] == "NOT_ON_WHATSAPP" else None

    # The lesson is stored with the failure (Z-API's comes with its webhook, a moment later).
    assert await eventually(refused_at_once, "the next send refused before the provider") == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "NOT_ON_WHATSAPP",
    )
    assert len(pstack.sim.instances["inst-absent"].sends) == calls  # the provider was not called again
    await pstack.send.SendMessage(text("inst-absent", "k3", to=PRESENT))  # others still go


async def test_a_w_api_send_error_teaches_the_cache(stack: Stack) -> None:
    await stack.add_instance("WAPI-ABSENT-1", phone=PHONE)
    stack.sim.absent_numbers.add(ABSENT)
    first = await stack.refused(text_request("WAPI-ABSENT-1", to=ABSENT))
    assert (first.code, first.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ON_WHATSAPP")
    assert len(stack.sim.sends("WAPI-ABSENT-1")) == 1
    second = await stack.refused(text_request("WAPI-ABSENT-1", to=ABSENT))
    assert (second.code, second.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ON_WHATSAPP")
    assert len(stack.sim.sends("WAPI-ABSENT-1")) == 1  # refused before the provider
    assert second.stored is not None
    stored = second.stored
    assert (stored.state, stored.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "NOT_ON_WHATSAPP")
    # Counted as suppressed (the refusal before the provider), not the provider's failure.
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{stack.app.http_port}/metrics")).text
    suppressed = [line for line in body.splitlines() if line.startswith("wapiguard_sends_suppressed_total{")]
    assert [line.rsplit(" ", 1)[1] for line in suppressed if 'reason="NOT_ON_WHATSAPP"' in line] == ["1.0"]


async def test_a_send_to_a_recipient_learned_absent_is_no_stall_evidence(stack: Stack) -> None:
    """A send the provider took (SENT, never delivered) to someone later known absent stops
    counting against the session: only the other silent recipients do."""
    instance = "WAPI-ABSENT-2"
    await stack.add_instance(instance, "silent_stall", phone=PHONE)
    silent = await stack.submit(text_request(instance, to=ABSENT))
    other = await stack.submit(text_request(instance, to=PRESENT))
    watch = stack.app.stall_watch
    await watch.check(instance)
    model = watch.model(instance)
    assert model is not None
    assert {s.recipient for s in model.open.values()} == {ABSENT, PRESENT}
    stack.sim.absent_numbers.add(ABSENT)
    checks: recipients_pb2_grpc.RecipientServiceAsyncStub = recipients_pb2_grpc.RecipientServiceStub(stack.channel)
    await checks.CheckRecipients(recipients_pb2.CheckRecipientsRequest(instance_id=instance, recipients=[ABSENT]))
    # The send path learns the answer (its copy of the cache), then the watch drops the evidence.
    assert (await stack.refused(text_request(instance, to=ABSENT))).reason == "NOT_ON_WHATSAPP"
    await watch.check(instance)
    assert {s.message_id for s in model.open.values()} == {other.id}
    assert silent.id not in model.open
