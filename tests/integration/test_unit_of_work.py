"""The unit of work (statemachine/store_ports.py `UnitOfWork`, adapters/persistence/unit_of_work.py):
what a use case writes through its transaction is committed together, or not at all."""

from __future__ import annotations

import pytest

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.store import Repository
from statemachine.domain import InstanceState, Plan
from statemachine.instance_machine import InstanceTrigger
from statemachine.store_ports import InstanceSignal, Transaction


class _Refused(Exception):
    pass


async def test_a_unit_of_work_commits_on_return_and_rolls_back_on_raise(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    try:
        await repo.upsert_instance("U-1", "U-1", "tok", Plan.LITE)
        connect = [InstanceSignal("U-1", InstanceTrigger.REPORT_CONNECTED, "probe", new_phone="5511999990000")]

        async def then_fail(tx: Transaction) -> None:
            changes = await tx.instances.apply_triggers(connect)
            assert [c.decision.to_state for c in changes] == [InstanceState.CONNECTED]  # seen inside
            raise _Refused

        with pytest.raises(_Refused):
            await repo.atomically(then_fail)
        found = await repo.get_instance("U-1")
        assert found is not None
        assert found[0].state is not InstanceState.CONNECTED  # rolled back with the transaction
        assert await repo.instance_history("U-1") == []

        async def connect_it(tx: Transaction) -> int:
            return len(await tx.instances.apply_triggers(connect))

        assert await repo.atomically(connect_it) == 1
        found = await repo.get_instance("U-1")
        assert found is not None
        assert found[0].state is InstanceState.CONNECTED
        assert [h.to_state for h in await repo.instance_history("U-1")] == [InstanceState.CONNECTED.value]
    finally:
        await repo.aclose()
        await engine.dispose()
