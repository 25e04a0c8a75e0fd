"""Opt-outs and known-absent recipients on two replicas sharing one database: each answers the
send path from its own copy, and learns what the other wrote within its refresh (here 0 s: at the
next send); a keyword from a customer of one instance of a shared list suppresses them for all."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.optouts import OptOutRepository
from adapters.persistence.recipients import RecipientCheckRepository
from adapters.persistence.send_policies import SendPolicyRepository
from services.app.optouts import OptOuts
from services.app.recipients import Recipients
from services.app.send_policy import SendPolicies
from statemachine.send_policy import SendPolicy

CUSTOMER = "5515981121799"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Any]:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_an_opt_out_on_one_replica_blocks_the_send_on_the_other(engine: Any) -> None:
    a, b = OptOuts(OptOutRepository(engine), refresh=0), OptOuts(OptOutRepository(engine), refresh=0)
    assert not await b.blocks("I-1", CUSTOMER)  # b has read the (empty) list into its copy
    assert await a.note_message("I-1", CUSTOMER, "Parar", datetime.now(UTC))
    assert await b.blocks("I-1", CUSTOMER)
    await b.remove("I-1", CUSTOMER, note="asked again", by="operator")
    assert not await a.blocks("I-1", CUSTOMER)
    await a.add("I-1", CUSTOMER, note="complaint", by="crm")
    assert await b.blocks("I-1", CUSTOMER)


async def test_a_shared_list_suppresses_for_every_instance_naming_it(engine: Any) -> None:
    policies = SendPolicies(SendPolicyRepository(engine))
    for instance_id in ("I-1", "I-2"):
        await policies.set(instance_id, SendPolicy(), by="test", optout_list="loja")
    a, b = OptOuts(OptOutRepository(engine), refresh=0), OptOuts(OptOutRepository(engine), refresh=0)
    assert await a.note_message("I-1", CUSTOMER, "SAIR", datetime.now(UTC))
    assert await b.blocks("I-2", CUSTOMER)  # another instance of the list, another replica
    assert not await b.blocks("I-3", CUSTOMER)  # an instance on its own list
    assert b.size_here("I-2") == 1


async def test_an_absence_learned_on_one_replica_is_known_to_the_other(engine: Any) -> None:
    def replica() -> Recipients:
        return Recipients(RecipientCheckRepository(engine), None, cast(Any, None), refresh=0)

    a, b = replica(), replica()
    assert not await b.absent("I-1", CUSTOMER)
    await a.learn_absent("I-1", CUSTOMER)
    assert await a.absent("I-1", CUSTOMER)
    assert await b.absent("I-1", CUSTOMER)
    assert b.known_absent_here("I-1", CUSTOMER)
