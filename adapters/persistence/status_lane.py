"""The statement builders of the status write path: they read what a status plan needs and write a
plan (statemachine/status_plan.py) with compare-and-set, and decide nothing.

Two implementations of one interface (`StatusStatements`):

- `PgStatusStatements`: PostgreSQL over `unnest()` arrays on the lane's leased asyncpg connection:
  one read and one atomic statement per round (pg_fast.READ_FOR_STATUS / APPLY_STATUSES).
- `SqlStatusStatements`: SQLAlchemy on a connection (SQLite's batch lane, and the locked
  one-event transaction on both databases, which also runs a stall lift next to the write).

A write stores the events of the plan whose message still has the planned version (a status for
a message not stored yet is parked), and applies a message update only when its event was
stored (not a re-delivery). It returns which messages kept their version (`locked`) and which
events were stored; the caller re-plans the others on the fresh row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import bindparam, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.persistence import changelog, history, pg_fast
from adapters.persistence.schema import instances, messages
from statemachine.domain import MessageState
from statemachine.status_plan import MessageUpdate, StatusFacts, StatusPlan

# Column order of pg_fast.APPLY_STATUSES' event arrays (the event row format: webhook_events._event_row).
EVENT_COLUMNS = (
    "id",
    "dedupe_key",
    "received_at",
    "route",
    "reason",
    "instance_id",
    "provider_message_id",
    "status",
    "parked",
    "payload",
    "headers",
    "message_id",
)


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    locked: set[str]  # messages whose version was the planned one
    stored: set[str]  # events stored (the others are re-deliveries, or wait for a re-plan)


class StatusSession(Protocol):
    async def read(self, provider_message_ids: Sequence[str]) -> list[StatusFacts]: ...
    async def write(self, plan: StatusPlan, event_rows: Sequence[dict[str, Any]]) -> WriteOutcome: ...


class StatusStatements(Protocol):
    def session(self) -> AbstractAsyncContextManager[StatusSession]: ...


def _facts(m: Any) -> StatusFacts:
    return StatusFacts(
        id=m["id"],
        instance_id=m["instance_id"],
        to=m["recipient"],
        provider_message_id=m["provider_message_id"],
        state=MessageState(m["state"]),
        attempts=m["attempts"],
        version=m["version"],
        created_at=m["created_at"],
        sent_at=m["sent_at"],
        failure_reason=m["failure_reason"],
        failure_detail=m["failure_detail"],
        trace_id=m["trace_id"],
        span_id=m["span_id"],
        instance_reason=m["instance_reason"],
    )


def _log_rows(plan: StatusPlan) -> list[dict[str, Any]]:
    return [changelog.change_row(c) for step in plan.steps for c in step.log]


# --- PostgreSQL --------------------------------------------------------------------------------


class _PgSession:
    """Each statement takes the lease on its own (one batch in flight per lane)."""

    def __init__(self, lease: pg_fast.Lease) -> None:
        self._lease = lease

    async def read(self, provider_message_ids: Sequence[str]) -> list[StatusFacts]:
        async with self._lease.driver(pg_fast.READ_FOR_STATUS) as driver:
            rows = await driver.fetch(pg_fast.READ_FOR_STATUS, sorted(set(provider_message_ids)))
        return [_facts(r) for r in rows]

    async def write(self, plan: StatusPlan, event_rows: Sequence[dict[str, Any]]) -> WriteOutcome:
        if not event_rows:
            return WriteOutcome(set(), set())
        event_of = {row["step"]: row["id"] for row in event_rows}
        steps = [(step.update, event_of[step.index]) for step in plan.steps if step.update is not None]
        upd: list[list[Any]] = [
            [u.message_id for u, _ in steps],
            [u.from_version for u, _ in steps],
            [u.to_version for u, _ in steps],
            [u.state.value for u, _ in steps],
            [u.failure_reason for u, _ in steps],
            [u.failure_detail for u, _ in steps],
            [history.entries_json(u.entries) for u, _ in steps],
            [u.updated_at for u, _ in steps],
            [event_id for _, event_id in steps],
        ]
        ev = [[row[name] for row in event_rows] for name in EVENT_COLUMNS]
        async with self._lease.driver(pg_fast.APPLY_STATUSES) as driver:
            outcome = await driver.fetchrow(pg_fast.APPLY_STATUSES, *ev, *upd, *changelog.as_columns(_log_rows(plan)))
        return WriteOutcome(set(outcome["locked"]), set(outcome["stored"]))


class PgStatusStatements:
    """The group-committed PostgreSQL lane: one read and one statement per round, on the lease."""

    def __init__(self, lease: pg_fast.Lease) -> None:
        self._lease = lease

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StatusSession]:
        yield _PgSession(self._lease)


# --- SQLAlchemy (SQLite; the locked one-event transaction on both) -------------------------------

_READ = (
    select(
        messages.c.id,
        messages.c.instance_id,
        messages.c.recipient,
        messages.c.provider_message_id,
        messages.c.state,
        messages.c.attempts,
        messages.c.version,
        messages.c.created_at,
        messages.c.sent_at,
        messages.c.failure_reason,
        messages.c.failure_detail,
        messages.c.trace_id,
        messages.c.span_id,
        instances.c.reason.label("instance_reason"),
    )
    .join(instances, instances.c.id == messages.c.instance_id)
    .where(messages.c.provider_message_id.in_(bindparam("pids", expanding=True)))
    .order_by(messages.c.id)
)
_READ_LOCKED = _READ.with_for_update(of=messages)

# The compare-and-set update every status write path stores (and the parked statuses, merged).
CAS_STATUS = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"), messages.c.version == bindparam("b_version"))
    .values(
        state=bindparam("state"),
        failure_reason=bindparam("failure_reason"),
        failure_detail=bindparam("failure_detail"),
        history=history.append(messages.c.history, "entries"),
        updated_at=bindparam("updated_at"),
        version=bindparam("to_version"),
    )
)


def cas_params(u: MessageUpdate) -> dict[str, Any]:
    return {
        "b_id": u.message_id,
        "b_version": u.from_version,
        "state": u.state.value,
        "failure_reason": u.failure_reason,
        "failure_detail": u.failure_detail,
        "entries": history.entries_json(u.entries),
        "updated_at": u.updated_at,
        "to_version": u.to_version,
    }


class _SqlSession:
    def __init__(self, conn: AsyncConnection, insert_event: Any, *, lock: bool) -> None:
        self._conn = conn
        self._insert_event = insert_event
        self._lock = lock

    async def read(self, provider_message_ids: Sequence[str]) -> list[StatusFacts]:
        query = _READ_LOCKED if self._lock and self._conn.dialect.name == "postgresql" else _READ
        rows = await self._conn.execute(query, {"pids": sorted(set(provider_message_ids))})
        return [_facts(r._mapping) for r in rows]

    async def write(self, plan: StatusPlan, event_rows: Sequence[dict[str, Any]]) -> WriteOutcome:
        updates = {u.message_id: u for u in plan.updates}
        locked: set[str] = set()
        if updates:
            keys = sorted((u.message_id, u.from_version) for u in updates.values())
            found = await self._conn.execute(
                select(messages.c.id).where(tuple_(messages.c.id, messages.c.version).in_(keys))
            )
            locked = {r.id for r in found}
        rows = [
            {k: v for k, v in row.items() if k not in ("message_id", "step")}
            for row in sorted(event_rows, key=lambda r: str(r["dedupe_key"]))
            if row["message_id"] is None or row["message_id"] in locked
        ]
        stored = {r.id for r in await self._conn.execute(self._insert_event, rows)} if rows else set()
        event_of = {row["step"]: row["id"] for row in event_rows}
        applied = [step for step in plan.steps if step.update is not None and event_of[step.index] in stored]
        if applied:
            # Versions were checked in this transaction (SQLite: the one writer; PostgreSQL: the
            # rows are locked), so one executemany serves the batch.
            await self._conn.execute(CAS_STATUS, [cas_params(step.update) for step in applied if step.update])
            await changelog.append_rows(self._conn, [changelog.change_row(c) for step in applied for c in step.log])
        return WriteOutcome(locked, stored)


class SqlStatusStatements:
    """Through SQLAlchemy: in the caller's transaction (`conn`), or one transaction per round."""

    def __init__(self, insert_event: Any, *, engine: Any = None, conn: AsyncConnection | None = None) -> None:
        self._insert_event = insert_event
        self._engine = engine
        self._conn = conn

    @asynccontextmanager
    async def session(self) -> AsyncIterator[StatusSession]:
        if self._conn is not None:
            yield _SqlSession(self._conn, self._insert_event, lock=True)
            return
        async with self._engine.begin() as conn:
            yield _SqlSession(conn, self._insert_event, lock=False)
