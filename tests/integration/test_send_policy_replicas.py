"""The send policy on two replicas sharing one database: the limits hold for the pair (each
replica spends slices of the shared budgets in memory; no overshoot), known contacts are shared,
and a replica gives back what it reserved and did not spend when it stops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.send_policies import SendPolicyRepository
from services.app import send_policy as module
from services.app.send_policy import SendPolicies
from statemachine.domain import Reason
from statemachine.errors import SendPaced
from statemachine.send_policy import SendPolicy

NOON = datetime(2026, 12, 7, 12, 0, 5, tzinfo=UTC)
CLOCK = {"now": NOON}  # the replicas' wall clock


@pytest.fixture
async def replicas(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[SendPolicies]]:
    CLOCK["now"] = NOON
    monkeypatch.setattr(module, "utcnow", lambda: CLOCK["now"])
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    try:
        yield [SendPolicies(SendPolicyRepository(engine)), SendPolicies(SendPolicyRepository(engine))]
    finally:
        await engine.dispose()


async def _admitted(replica: SendPolicies, instance: str, to: str) -> Reason | None:
    try:
        await replica.admit(instance, to)
    except SendPaced as paced:
        return paced.reason
    return None


async def test_the_per_minute_cap_holds_for_two_replicas_together(replicas: list[SendPolicies]) -> None:
    a, b = replicas
    await a.set("I-1", SendPolicy(max_per_minute=20), by="test")
    outcomes = [await _admitted((a, b)[i % 2], "I-1", "5511911110000") for i in range(40)]
    assert outcomes.count(None) <= 20  # never more than the cap, whatever the slices
    assert set(outcomes) == {None, Reason.SEND_RATE_PER_MINUTE}
    # Each replica took a slice of 20 // 8 = 2 at a time: together they spend the whole cap.
    assert outcomes.count(None) == 20
    stored = await a.get("I-1")
    assert stored is not None
    assert stored.counters.minute_count == 20


async def test_an_unspent_slice_goes_back_when_a_replica_stops(replicas: list[SendPolicies]) -> None:
    a, b = replicas
    await a.set("I-2", SendPolicy(max_per_minute=80), by="test")  # slices of 10
    assert await _admitted(a, "I-2", "5511911110000") is None  # a holds 9 more
    stored = await a.get("I-2")
    assert stored is not None
    assert stored.counters.minute_count == 10
    await a.aclose()
    stored = await a.get("I-2")
    assert stored is not None
    assert stored.counters.minute_count == 1
    outcomes = [await _admitted(b, "I-2", "5511911110000") for _ in range(85)]
    assert outcomes.count(None) == 79  # all of the cap but the one a spent


async def test_new_recipient_budgets_hold_across_replicas_and_known_contacts_are_shared(
    replicas: list[SendPolicies],
) -> None:
    a, b = replicas
    await a.set("I-3", SendPolicy(new_recipients_per_hour=3, new_recipients_per_day=5), by="test")
    outcomes = [await _admitted((a, b)[i % 2], "I-3", f"55119111100{i:02d}") for i in range(6)]
    assert outcomes == [None, None, None, *[Reason.NEW_RECIPIENTS_HOURLY] * 3]
    # Recipient 01 was counted by b: a knows it from the store, and it is not new again.
    assert await _admitted(a, "I-3", "5511911110001") is None
    assert await _admitted(b, "I-3", "5511911110000") is None
    # An hour later: two more new ones make the day's 5.
    CLOCK["now"] = NOON + timedelta(hours=1)
    more = [await _admitted((b, a)[i % 2], "I-3", f"55119111101{i:02d}") for i in range(3)]
    assert more == [None, None, Reason.NEW_RECIPIENTS_DAILY]


async def test_the_interval_is_one_floor_for_both_replicas(replicas: list[SendPolicies]) -> None:
    a, b = replicas
    await a.set("I-4", SendPolicy(min_interval_seconds=30), by="test")
    assert await _admitted(a, "I-4", "5511911110000") is None
    assert await _admitted(b, "I-4", "5511911110000") is Reason.SEND_INTERVAL
    CLOCK["now"] = NOON + timedelta(seconds=31)
    assert await _admitted(b, "I-4", "5511911110000") is None
    assert await _admitted(a, "I-4", "5511911110000") is Reason.SEND_INTERVAL
