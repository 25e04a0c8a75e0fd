"""The instances aggregate: registration, reads, the one writer of instance transitions
(`apply_instance_triggers`, inside a caller's transaction) and the coalesced touches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.persistence import changelog
from adapters.persistence.rows import INSTANCE_COLUMNS, instance_from_row, utcnow
from adapters.persistence.schema import (
    instance_stuck_counts,
    instance_transitions,
    instances,
)
from adapters.persistence.store_base import StoreBase
from statemachine import changes as change_log
from statemachine.domain import (
    InstanceRecord,
    InstanceState,
    Plan,
    Reason,
    StateChange,
)
from statemachine.instance_machine import InstanceTrigger, decide_instance
from statemachine.ports import (
    ConcurrentUpdateError,
    InstanceChange,
)
from statemachine.store_ports import InstanceSignal

# The compare-and-set update of an instance transition (apply_instance_triggers, below).
_CAS_INSTANCE = (
    update(instances)
    .where(instances.c.id == bindparam("b_id"), instances.c.version == bindparam("b_version"))
    .values(
        {
            name: bindparam(name)
            for name in (
                "state",
                "reason",
                "phone_number",
                "checked_at",
                "last_event_at",
                "state_changed_at",
                "stall_ended_at",
                "consecutive_gateway_failures",
                "updated_at",
                "version",
            )
        }
    )
)


# The columns _instance_from_driver reads, by position; the stuck count joined from its counter row.
_LIST_INSTANCES_PG = """
SELECT i.id, i.name, i.plan, i.state, i.reason, i.phone_number, i.checked_at, i.last_event_at,
       i.state_changed_at, i.version, i.consecutive_gateway_failures, i.webhooks_state,
       i.webhooks_detail, coalesce(c.stuck, 0), i.last_receipt_at, i.provider
FROM instances i LEFT JOIN instance_stuck_counts c ON c.instance_id = i.id
WHERE $1::text[] IS NULL OR i.state = ANY($1::text[])
ORDER BY i.id
"""


_PLANS = {p.value: p for p in Plan}


_INSTANCE_STATES = {s.value: s for s in InstanceState}


def _instance_from_driver(r: Any) -> InstanceRecord:
    """A row of _LIST_INSTANCES_PG (asyncpg returns aware UTC datetimes: nothing to convert)."""
    return InstanceRecord(
        instance_id=r[0],
        name=r[1],
        plan=_PLANS[r[2]],
        state=_INSTANCE_STATES[r[3]],
        reason=r[4],
        phone_number=r[5],
        checked_at=r[6],
        last_event_at=r[7],
        state_changed_at=r[8],
        version=r[9],
        consecutive_gateway_failures=r[10],
        stuck_messages=int(r[13]),
        webhooks_state=r[11],
        webhooks_detail=r[12],
        last_receipt_at=r[14],
        provider=r[15],
    )


async def apply_instance_triggers(conn: AsyncConnection, signals: Sequence[InstanceSignal]) -> list[InstanceChange]:
    """The one writer of instance transitions: each signal runs through the instance machine on
    its locked row (rows locked in id order) and is stored with compare-and-set, with its
    transition row and change-log entry. One statement per kind of write for the whole list.
    Instances that do not exist are left out of the result."""
    by_id = {s.instance_id: s for s in signals}
    rows = (
        await conn.execute(
            select(*INSTANCE_COLUMNS, instances.c.stall_ended_at)
            .where(instances.c.id.in_(sorted(by_id)))
            .order_by(instances.c.id)
            .with_for_update()
        )
    ).all()
    now = utcnow()
    params: list[dict[str, Any]] = []
    transitions: list[dict[str, Any]] = []
    log: list[change_log.Change] = []
    out: list[InstanceChange] = []
    for row in rows:
        change, values = _decide(row, by_id[row.id], now)
        params.append(values)
        out.append(change)
        decision = change.decision
        if decision.changed:
            transitions.append(
                {
                    "instance_id": row.id,
                    "from_state": decision.from_state.value,
                    "to_state": decision.to_state.value,
                    "reason": decision.reason,
                    "source": change.source,
                    "at": now,
                }
            )
            log.append(
                change_log.instance_health_changed(
                    row.id,
                    decision.from_state,
                    decision.from_reason,
                    decision.to_state,
                    decision.reason,
                    decision.phone,
                    change.source,
                    now,
                )
            )
    if not params:
        return []
    result = await conn.execute(_CAS_INSTANCE, params if len(params) > 1 else params[0])
    # The rows are locked, so the version check holds; a driver reports one executemany's
    # rowcount unreliably, so it is checked where it is exact (one row).
    if len(params) == 1 and result.rowcount != 1:
        raise ConcurrentUpdateError(params[0]["b_id"])
    if transitions:
        await conn.execute(instance_transitions.insert(), transitions)
        await changelog.append(conn, log)
    return out


def _decide(row: Any, signal: InstanceSignal, now: datetime) -> tuple[InstanceChange, dict[str, Any]]:
    """One locked row and its signal: the instance machine's decision, the record after it and the
    compare-and-set parameters that store it."""
    record = instance_from_row(row)
    decision = decide_instance(
        record.state, record.reason, record.phone_number, signal.trigger, new_phone=signal.new_phone
    )
    updated = replace(
        record,
        version=record.version + 1,
        checked_at=signal.checked_at if signal.checked_at is not None else record.checked_at,
        last_event_at=signal.event_at if signal.event_at is not None else record.last_event_at,
    )
    stall_ended_at = row.stall_ended_at
    if decision.applied:
        updated.state, updated.reason, updated.phone_number = decision.to_state, decision.reason, decision.phone
        if decision.to_state is InstanceState.CONNECTED:
            updated.consecutive_gateway_failures = 0
    if decision.changed:
        updated.state_changed_at = now
        if decision.ends_stall:
            stall_ended_at = now
    values = {
        "b_id": record.instance_id,
        "b_version": record.version,
        "state": updated.state.value,
        "reason": updated.reason,
        "phone_number": updated.phone_number,
        "checked_at": updated.checked_at,
        "last_event_at": updated.last_event_at,
        "state_changed_at": updated.state_changed_at,
        "stall_ended_at": stall_ended_at,
        "consecutive_gateway_failures": updated.consecutive_gateway_failures,
        "updated_at": now,
        "version": updated.version,
    }
    return InstanceChange(updated, decision, signal.source, now), values


async def apply_trigger_in(
    conn: AsyncConnection,
    instance_id: str,
    trigger: InstanceTrigger,
    source: str,
    new_phone: str | None,
    checked_at: datetime | None,
    event_at: datetime | None,
) -> InstanceChange | None:
    changes = await apply_instance_triggers(
        conn, [InstanceSignal(instance_id, trigger, source, new_phone, checked_at, event_at)]
    )
    return changes[0] if changes else None


async def lift_stall(conn: AsyncConnection, instance_id: str, changes: list[InstanceChange]) -> None:
    """The one place a delivery lifts a stall (the rule: message_machine.lifts_stall)."""
    resumed = await apply_trigger_in(
        conn, instance_id, InstanceTrigger.REPORT_DELIVERY_RESUMED, "webhook", None, None, None
    )
    if resumed is not None and resumed.decision.changed:
        changes.append(resumed)


class InstanceStore(StoreBase):
    """Instances: one row each, every transition through `apply_instance_triggers`."""

    async def upsert_instance(
        self, instance_id: str, name: str, token: str | None, plan: Plan
    ) -> tuple[InstanceRecord, bool]:
        """Creates the instance (state UNKNOWN) or updates name/plan/token. Returns (row, created)."""
        now = utcnow()
        async with self.transaction() as conn:
            row = (
                await conn.execute(select(*INSTANCE_COLUMNS).where(instances.c.id == instance_id).with_for_update())
            ).first()
            if row is None:
                if not token:
                    raise ValueError("token is required on first registration")
                values = {
                    "id": instance_id,
                    "name": name or instance_id,
                    "plan": plan.value,
                    "token": token,
                    "state": InstanceState.UNKNOWN.value,
                    "reason": Reason.REGISTERED.value,
                    "created_at": now,
                    "updated_at": now,
                    "state_changed_at": now,
                    "version": 1,
                }
                result = await conn.execute(
                    self._insert(instances).values(**values).on_conflict_do_nothing(index_elements=["id"])
                )
                if result.rowcount == 1:
                    created_row = (
                        await conn.execute(select(*INSTANCE_COLUMNS).where(instances.c.id == instance_id))
                    ).one()
                    return instance_from_row(created_row), True
                row = (await conn.execute(select(*INSTANCE_COLUMNS).where(instances.c.id == instance_id))).one()
            changes: dict[str, Any] = {"plan": plan.value, "updated_at": now, "version": row.version + 1}
            if name:
                changes["name"] = name
            if token:
                changes["token"] = token
            await conn.execute(update(instances).where(instances.c.id == instance_id).values(**changes))
            updated = (await conn.execute(select(*INSTANCE_COLUMNS).where(instances.c.id == instance_id))).one()
            return instance_from_row(updated), False

    async def get_instance(self, instance_id: str) -> tuple[InstanceRecord, str] | None:
        """The instance and its token (for the provider call only: never returned to callers)."""
        async with self._auto.connect() as conn:
            row = (
                await conn.execute(select(*INSTANCE_COLUMNS, instances.c.token).where(instances.c.id == instance_id))
            ).first()
        return (instance_from_row(row), row.token) if row else None

    async def list_instances(self, states: Sequence[InstanceState] = ()) -> list[InstanceRecord]:
        """Every instance (of these states) with its stuck count, in one statement.

        On PostgreSQL the rows are read through the driver and mapped by position: for 1,000
        instances SQLAlchemy's per-column result processing cost more than the query itself.
        """
        wanted = [s.value for s in states]
        if self._pg:
            async with self.engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None  # a connected pool connection has its driver
                rows = await driver.fetch(_LIST_INSTANCES_PG, wanted or None)
            return [_instance_from_driver(r) for r in rows]
        query = (
            select(*INSTANCE_COLUMNS, func.coalesce(instance_stuck_counts.c.stuck, 0).label("stuck"))
            .outerjoin(instance_stuck_counts, instance_stuck_counts.c.instance_id == instances.c.id)
            .order_by(instances.c.id)
        )
        if wanted:
            query = query.where(instances.c.state.in_(wanted))
        async with self.engine.connect() as conn:
            return [replace(instance_from_row(r), stuck_messages=r.stuck) for r in await conn.execute(query)]

    async def instance_state_counts(self) -> dict[InstanceState, int]:
        """How many instances are in each state (the gauges): one grouped read."""
        query = select(instances.c.state, func.count()).group_by(instances.c.state)
        async with self._auto.connect() as conn:
            return {InstanceState(r[0]): int(r[1]) for r in await conn.execute(query)}

    async def list_credentials(self) -> list[tuple[str, str]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(instances.c.id, instances.c.token).order_by(instances.c.id))
            return [(r.id, r.token) for r in rows]

    async def stuck_counts(self, instance_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Messages stuck in SENT per instance: one counter row each, kept by triggers."""
        c = instance_stuck_counts.c
        query = select(c.instance_id, c.stuck).where(c.stuck > 0)
        if instance_ids is not None:
            query = query.where(c.instance_id.in_(list(instance_ids)))
        async with self.engine.connect() as conn:
            return {r[0]: r[1] for r in await conn.execute(query)}

    async def apply_instance_trigger(
        self,
        instance_id: str,
        trigger: InstanceTrigger,
        *,
        source: str,
        new_phone: str | None = None,
        checked_at: datetime | None = None,
        event_at: datetime | None = None,
        conn: AsyncConnection | None = None,
    ) -> InstanceChange | None:
        """Runs an instance trigger on the stored row. None when the instance does not exist."""
        if conn is None:
            async with self.transaction() as own:
                return await apply_trigger_in(own, instance_id, trigger, source, new_phone, checked_at, event_at)
        return await apply_trigger_in(conn, instance_id, trigger, source, new_phone, checked_at, event_at)

    async def count_gateway_failure(self, instance_id: str, *, failed: bool) -> int:
        """Counts consecutive provider gateway failures of sends; a success resets it."""
        async with self.transaction() as conn:
            if failed:
                stmt = (
                    update(instances)
                    .where(instances.c.id == instance_id)
                    .values(consecutive_gateway_failures=instances.c.consecutive_gateway_failures + 1)
                    .returning(instances.c.consecutive_gateway_failures)
                )
                return int((await conn.execute(stmt)).scalar_one_or_none() or 0)
            await conn.execute(
                update(instances)
                .where(instances.c.id == instance_id, instances.c.consecutive_gateway_failures > 0)
                .values(consecutive_gateway_failures=0)
            )
            return 0

    async def touch_instances(
        self, last_event: dict[str, datetime], last_receipt: dict[str, datetime] | None = None
    ) -> None:
        """Coalesced last_event_at / last_receipt_at updates (one UPDATE per instance and column per
        flush, never backwards)."""
        if not last_event and not last_receipt:
            return
        async with self.transaction() as conn:
            for column, batch in (("last_event_at", last_event), ("last_receipt_at", last_receipt or {})):
                stored = instances.c[column]
                for instance_id, at in sorted(batch.items()):
                    await conn.execute(
                        update(instances)
                        .where(instances.c.id == instance_id, or_(stored.is_(None), stored < at))
                        .values({column: at})
                    )

    async def instance_changes_since(self, after_id: int, limit: int = 500) -> list[tuple[int, str, StateChange]]:
        query = (
            select(instance_transitions)
            .where(instance_transitions.c.id > after_id)
            .order_by(instance_transitions.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [
                (r.id, r.instance_id, StateChange(r.from_state, r.to_state, r.reason, r.source, r.at))
                for r in await conn.execute(query)
            ]

    async def last_instance_change_id(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.max(instance_transitions.c.id)))).scalar() or 0)

    async def instance_history(self, instance_id: str, limit: int = 50) -> list[StateChange]:
        query = (
            select(instance_transitions)
            .where(instance_transitions.c.instance_id == instance_id)
            .order_by(instance_transitions.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [StateChange(r.from_state, r.to_state, r.reason, r.source, r.at) for r in await conn.execute(query)]

    async def set_webhooks_state(self, instance_id: str, state: str, detail: str) -> InstanceRecord | None:
        async with self.transaction() as conn:
            await conn.execute(
                update(instances)
                .where(instances.c.id == instance_id)
                .values(webhooks_state=state, webhooks_detail=detail[:1000], updated_at=utcnow())
            )
        found = await self.get_instance(instance_id)
        return found[0] if found else None

    async def delete_instance(self, instance_id: str) -> bool:
        """Forgets the instance and its token; its messages and events stay for the record."""
        async with self.transaction() as conn:
            result = await conn.execute(instances.delete().where(instances.c.id == instance_id))
            return bool(result.rowcount)
