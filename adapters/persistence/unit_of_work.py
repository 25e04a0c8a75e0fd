"""The unit of work over SQLAlchemy (statemachine/store_ports.py `UnitOfWork`): one transaction,
the aggregates' in-transaction stores inside it, on SQLite and PostgreSQL alike.

What used to be a function over a connection that another aggregate's transaction passed in
(`instances.apply_instance_triggers`, `instances.lift_stall`, `messages.locked_message`,
`messages.save_message`, the sweep's stuck-run read) is reached here as a method of the
transaction's store for its aggregate. A use case that writes more than one aggregate in one
transaction calls `atomically(work)`: `work` gets the `Transaction`; the transaction commits when
it returns and rolls back when it raises. It is a coroutine method of the store, so the bounded
store (bounded.py) times a request's whole unit of work like any other storage call.

Not on the hot single-write paths: the group-committed message insert, the batched
PENDING → SENT lane and the status lane keep their own statements (messages.py,
send_outcomes.py, status_lane.py); docs/architecture.md lists which flows use it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.persistence import instances as instance_rows
from adapters.persistence import messages as message_rows
from adapters.persistence import sweeps as sweep_rows
from adapters.persistence.store_base import StoreBase
from statemachine.domain import MessageRecord
from statemachine.ports import InstanceChange
from statemachine.store_ports import InstanceSignal, StuckRun

T = TypeVar("T")


class _Instances:
    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def apply_triggers(self, signals: Sequence[InstanceSignal]) -> list[InstanceChange]:
        return await instance_rows.apply_instance_triggers(self._conn, signals)

    async def lift_stall(self, instance_id: str, changes: list[InstanceChange]) -> None:
        await instance_rows.lift_stall(self._conn, instance_id, changes)


class _Messages:
    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def locked(self, message_id: str) -> MessageRecord | None:
        return await message_rows.locked_message(self._conn, message_id)

    async def save(self, before: MessageRecord, after: MessageRecord) -> None:
        await message_rows.save_message(self._conn, before, after)


class _StuckRuns:
    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def read(self, instance_ids: Sequence[str], threshold: int) -> dict[str, StuckRun]:
        return await sweep_rows.stuck_runs_in(self._conn, instance_ids, threshold)

    async def stalls_with_deliveries(self) -> dict[str, tuple[datetime, datetime | None]]:
        return await sweep_rows.stalls_with_deliveries_in(self._conn)


class SqlTransaction:
    """One open transaction and the aggregates' stores over it (store_ports.Transaction)."""

    __slots__ = ("instances", "messages", "stuck_runs")

    def __init__(self, conn: AsyncConnection) -> None:
        self.instances = _Instances(conn)
        self.messages = _Messages(conn)
        self.stuck_runs = _StuckRuns(conn)


class UnitOfWorkStore(StoreBase):
    """`atomically`: the unit-of-work port, for the combined store (store.py) or alone."""

    async def atomically(self, work: Callable[[SqlTransaction], Awaitable[T]]) -> T:
        async with self.transaction() as conn:
            return await work(SqlTransaction(conn))
