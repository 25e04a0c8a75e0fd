"""Retention: old rows are deleted in small batches by one replica at a time.

Each batch is one short statement that reads a bounded slice from the oldest end of an index
(so the cost of a run follows what it deletes, never the table's size) and deletes the expired
rows of that slice. On PostgreSQL a run holds a session advisory lock on its own connection: a
replica that does not get it skips its turn. SQLite has one process; a local lock suffices.

What is never deleted: a message that is not terminal (PENDING, SENT — stuck or not), or one that
changed within its retention period; the delete statement re-checks both, so a message retried
or updated meanwhile stays. Raw events are the dedupe records of webhook re-deliveries, so their
retention has a floor (see the configuration).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence.schema import change_log, chat_statuses, events, instance_transitions, messages
from statemachine.domain import MessageState
from statemachine.events import Route
from statemachine.ports import PruneReport, RetentionPolicy

# pg_try_advisory_lock key of the pruner (distinct from the migration lock).
PRUNE_LOCK_KEY = 727275
TERMINAL_STATES = tuple(
    s.value for s in (MessageState.DELIVERED, MessageState.READ, MessageState.PLAYED, MessageState.FAILED)
)
# A run stops after this many batches even if rows remain (the next run continues).
MAX_BATCHES_PER_RUN = 2_000


class Pruner:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pg = engine.dialect.name == "postgresql"
        self.policy = RetentionPolicy()
        self._local = asyncio.Lock()

    async def run_once(self, policy: RetentionPolicy, now: datetime | None = None) -> PruneReport:
        now = now or datetime.now(UTC)
        if self._local.locked():
            return PruneReport(ran=False)
        async with self._local, self._engine.connect() as conn:
            self.policy = policy
            if self._pg:
                got = (await conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({PRUNE_LOCK_KEY})")).scalar()
                if not got:
                    return PruneReport(ran=False)
            try:
                return await self._run(conn, now)
            finally:
                if self._pg:
                    await conn.exec_driver_sql(f"SELECT pg_advisory_unlock({PRUNE_LOCK_KEY})")

    async def _run(self, conn: AsyncConnection, now: datetime) -> PruneReport:
        started = time.perf_counter()
        report = PruneReport(ran=True)
        budget = [MAX_BATCHES_PER_RUN]
        p = self.policy
        report.deleted["events"] = await self._events(conn, now - p.events, budget)
        for table, column, keep in (
            (chat_statuses, chat_statuses.c.received_at, p.chat_statuses),
            (instance_transitions, instance_transitions.c.at, p.instance_transitions),
            (change_log, change_log.c.occurred_at, p.change_log),
        ):
            report.deleted[table.name] = await self._by_key(conn, table, column, now - keep, budget)
        report.deleted["messages"] = await self._messages(conn, now - p.messages, budget)
        report.complete = budget[0] > 0
        report.seconds = time.perf_counter() - started
        return report

    async def _batches(self, conn: AsyncConnection, table: Table, expired: Any, budget: list[int]) -> int:
        """Reads a bounded slice of expired keys, deletes exactly those; until a short slice.
        Two plain statements per batch: a generic plan of `IN (subquery LIMIT $n)` is free to
        hash the whole table, a delete by listed keys never is."""
        key = next(iter(table.primary_key.columns))
        total = 0
        while budget[0] > 0:
            budget[0] -= 1
            ids = [r[0] for r in await conn.execute(expired)]
            if ids:
                total += (await conn.execute(delete(table).where(key.in_(ids)))).rowcount
            if len(ids) < self.policy.batch:
                break
            await asyncio.sleep(self.policy.pause)
        return total

    async def _events(self, conn: AsyncConnection, cutoff: datetime, budget: list[int]) -> int:
        total = 0
        for route in Route:  # each route's slice comes from the oldest end of (route, received_at)
            oldest = (
                select(events.c.id)
                .where(events.c.route == route.value, events.c.received_at < cutoff)
                .order_by(events.c.received_at)
                .limit(self.policy.batch)
            )
            total += await self._batches(conn, events, oldest, budget)
        return total

    async def _by_key(self, conn: AsyncConnection, table: Table, at: Any, cutoff: datetime, budget: list[int]) -> int:
        """Append-only tables: the oldest slice by primary key (time-ordered), its expired rows
        deleted; stops at a slice that is not all expired. (A filter on the time column with an
        ORDER BY on the key would walk every live row once nothing old is left.)"""
        key = next(iter(table.primary_key.columns))
        head = select(key, at).order_by(key).limit(self.policy.batch)
        total = 0
        while budget[0] > 0:
            budget[0] -= 1
            rows = (await conn.execute(head)).all()
            ids = [r[0] for r in rows if r[1] < cutoff]
            if ids:
                total += (await conn.execute(delete(table).where(key.in_(ids)))).rowcount
            if not ids or len(ids) < len(rows) or len(rows) < self.policy.batch:
                break
            await asyncio.sleep(self.policy.pause)
        return total

    async def _messages(self, conn: AsyncConnection, cutoff: datetime, budget: list[int]) -> int:
        """Terminal messages created and last changed before the cutoff, walked along
        (created_at, id) from the oldest; old open ones are stepped over, never deleted."""
        after: tuple[datetime, str] | None = None
        total = 0
        while budget[0] > 0:
            budget[0] -= 1
            page = select(messages.c.id, messages.c.created_at).where(messages.c.created_at < cutoff)
            if after is not None:
                page = page.where(tuple_(messages.c.created_at, messages.c.id) > tuple_(*after))
            rows = (
                await conn.execute(page.order_by(messages.c.created_at, messages.c.id).limit(self.policy.batch))
            ).all()
            if not rows:
                break
            after = (rows[-1].created_at, rows[-1].id)
            total += (
                await conn.execute(
                    delete(messages).where(
                        messages.c.id.in_([r.id for r in rows]),
                        messages.c.state.in_(TERMINAL_STATES),
                        messages.c.updated_at < cutoff,
                    )
                )
            ).rowcount
            if len(rows) < self.policy.batch:
                break
            await asyncio.sleep(self.policy.pause)
        return total
