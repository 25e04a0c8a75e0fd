"""Two replicas (`wapi-guard serve` processes) on one PostgreSQL database dispatch held messages:
each held message reaches the provider exactly once, whichever replica claims it, and one
replica's kill -9 midway sends nothing twice (the simulator's own record of sends is the truth).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from google.protobuf.duration_pb2 import Duration

from services.api.wapiguard.v1 import common_pb2, send_pb2, send_policy_pb2, send_policy_pb2_grpc
from tests import polling
from tests.conftest import POSTGRES_URL
from tests.slow.test_replicas import (
    _TEST_DB,
    RPC_TIMEOUT,
    Fleet,
    SlowSimulator,
    clean_database,
    register,
    report,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

HOLDS_DB = f"wapi_guard_slow_holds_{_TEST_DB}"
INSTANCE = "7K2PQA-HOLDRP-CY0001"
HELD = common_pb2.MESSAGE_STATE_HELD
COUNT = 60


@pytest_asyncio.fixture(loop_scope="module")
async def sim() -> AsyncIterator[SlowSimulator]:
    simulator = SlowSimulator(delivered_after=0.05, read_after=0.1)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def fleet(tmp_path: Path, sim: SlowSimulator) -> AsyncIterator[Fleet]:
    processes = Fleet(tmp_path, sim)
    try:
        yield processes
    finally:
        await processes.aclose()


async def test_two_dispatchers_never_send_a_held_message_twice_even_after_a_kill(
    fleet: Fleet, sim: SlowSimulator
) -> None:
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL only: set WAPIGUARD_TEST_DATABASE_URL")
    url = await clean_database(HOLDS_DB)
    extra = ("--hold-interval", "0.05", "--pending-grace", "1")
    a, b = await fleet.start_many(url, ["hold-a", "hold-b"], *extra)
    await register(sim, a, INSTANCE)
    policies = send_policy_pb2_grpc.SendPolicyServiceStub(a.channel)
    await policies.SetSendPolicy(
        send_policy_pb2.SetSendPolicyRequest(
            instance_id=INSTANCE, policy=send_policy_pb2.SendPolicy(min_interval_seconds=0.05)
        ),
        timeout=RPC_TIMEOUT,
    )
    ids = []
    for i in range(COUNT):
        replica = (a, b)[i % 2]
        request = send_pb2.SendMessageRequest(
            instance_id=INSTANCE,
            to=f"551598113{i:04d}",
            idempotency_key=f"hold-{i}",
            text=send_pb2.TextContent(body=f"Mensagem {i}"),
            hold_for=Duration(seconds=120),
        )
        ids.append((await replica.send.SendMessage(request, timeout=RPC_TIMEOUT)).id)
    await asyncio.sleep(0.8)
    await fleet.kill(a)  # midway: a's claims in flight are settled by b's reconciliation

    async def settled() -> list[common_pb2.Message] | None:
        got = [await b.send.GetMessage(send_pb2.GetMessageRequest(message_id=i), timeout=RPC_TIMEOUT) for i in ids]
        return got if all(m.state not in (HELD, common_pb2.MESSAGE_STATE_PENDING) for m in got) else None

    final = await polling.eventually(settled, "every held message settled", 30.0)
    per_recipient = Counter(str(s["body"]["phone"]) for s in sim.sends(INSTANCE))
    assert max(per_recipient.values()) == 1  # never twice
    states = Counter(common_pb2.MessageState.Name(m.state) for m in final)
    sent = sum(n for name, n in states.items() if name != "MESSAGE_STATE_FAILED")
    reasons = Counter(m.failure_reason for m in final if m.state == common_pb2.MESSAGE_STATE_FAILED)
    assert set(reasons) <= {"OUTCOME_UNKNOWN"}  # claimed by the killed replica: never guessed SENT
    # Every SENT message reached the provider; a provider send without a SENT message is one the
    # killed replica handed over without recording the answer: OUTCOME_UNKNOWN, never hidden.
    assert {m.to for m in final if m.state != common_pb2.MESSAGE_STATE_FAILED} <= set(per_recipient)
    assert sent <= len(per_recipient) <= sent + reasons["OUTCOME_UNKNOWN"]
    report(
        "holds_two_replicas_kill",
        messages=COUNT,
        provider_sends=len(per_recipient),
        states=dict(states),
        failed=dict(reasons),
    )
