"""A replay of an idempotency key whose first attempt has no recorded answer yet.

While that attempt may still be running the caller hears ABORTED/SEND_IN_PROGRESS with a
RetryInfo delay (come back later: the answer will change); once the attempt is known dead the
message is FAILED/OUTCOME_UNKNOWN and the replay answers FAILED_PRECONDITION naming
RetryMessage (retrying the same call can never change it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.api.wapiguard.v1 import common_pb2, send_pb2
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness

RETRY_METHOD = "wapiguard.v1.SendService/RetryMessage"


def text(instance_id: str, key: str) -> send_pb2.SendMessageRequest:
    return send_pb2.SendMessageRequest(
        instance_id=instance_id, to="5515981121710", idempotency_key=key, text=send_pb2.TextContent(body="Olá")
    )


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


@pytest.fixture
async def short_grace(database_url: str) -> AsyncIterator[Harness]:
    # No background reconciler: the replay itself must notice the dead attempt.
    harness = await start_harness(database_url, pending_grace=0.3, send_timeout=0.3, sweep_interval=0)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def test_replay_while_the_first_attempt_runs_is_aborted_with_a_retry_delay(guard: Harness) -> None:
    await guard.register("idem-1")
    await guard.connect("idem-1")
    guard.provider.send_gate = asyncio.Event()
    first = asyncio.ensure_future(guard.send.SendMessage(text("idem-1", "order-1"), timeout=10))
    await asyncio.sleep(0.3)
    assert not first.done()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("idem-1", "order-1"), timeout=5)
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ABORTED, "SEND_IN_PROGRESS")
    assert error.localized  # a text a UI can show
    delay = retry_delay(caught.value)
    assert delay is not None
    assert 0 < delay <= 60
    assert error.metadata["message_state"] == "PENDING"

    guard.provider.send_gate.set()
    sent = await first
    assert sent.state == common_pb2.MESSAGE_STATE_SENT
    assert error.metadata["message_id"] == sent.id
    again = await guard.send.SendMessage(text("idem-1", "order-1"), timeout=5)
    assert (again.id, again.state) == (sent.id, common_pb2.MESSAGE_STATE_SENT)
    assert len(guard.provider.sends) == 1


async def test_replay_after_the_attempt_died_answers_outcome_unknown_naming_retry(short_grace: Harness) -> None:
    guard = short_grace
    await guard.register("idem-2")
    await guard.connect("idem-2")
    guard.provider.send_gate = asyncio.Event()
    first = asyncio.ensure_future(guard.send.SendMessage(text("idem-2", "order-2"), timeout=10))
    await asyncio.sleep(0.2)
    # The attempt dies between calling the provider and storing its answer (as in a crash).
    for task in list(guard.app.sending.inflight):
        task.cancel()
    with pytest.raises(grpc.aio.AioRpcError):
        await first
    await asyncio.sleep(0.4)  # past the grace: nothing can still be running for this key

    for _ in range(2):  # the same answer every time: a retry of this call cannot change it
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await guard.send.SendMessage(text("idem-2", "order-2"), timeout=5)
        error = rich_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUTCOME_UNKNOWN")
        assert error.metadata["retry_with"] == RETRY_METHOD
        assert retry_delay(caught.value) is None
    message_id = error.metadata["message_id"]
    stored = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=message_id))
    assert (stored.state, stored.failure_reason) == (common_pb2.MESSAGE_STATE_FAILED, "OUTCOME_UNKNOWN")
    assert len(guard.provider.sends) == 1  # never a second provider call behind the caller's back

    # The way out it names works.
    guard.provider.send_gate.set()
    retried = await guard.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=message_id), timeout=5)
    assert retried.state == common_pb2.MESSAGE_STATE_SENT
    assert len(guard.provider.sends) == 2


async def test_replay_of_a_reconciled_message_is_a_precondition_failure_not_unavailable(
    short_grace: Harness,
) -> None:
    guard = short_grace
    await guard.register("idem-3")
    await guard.connect("idem-3")
    guard.provider.send_gate = asyncio.Event()
    first = asyncio.ensure_future(guard.send.SendMessage(text("idem-3", "order-3"), timeout=10))
    await asyncio.sleep(0.2)
    for task in list(guard.app.sending.inflight):
        task.cancel()
    with pytest.raises(grpc.aio.AioRpcError):
        await first
    await asyncio.sleep(0.4)
    assert [m.instance_id for m in await guard.app.jobs.reconcile_once()] == ["idem-3"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guard.send.SendMessage(text("idem-3", "order-3"), timeout=5)
    error = rich_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OUTCOME_UNKNOWN")
    assert error.metadata["retry_with"] == RETRY_METHOD
