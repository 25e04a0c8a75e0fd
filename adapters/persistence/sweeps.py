"""The periodic jobs' writes: stuck marking, crash reconciliation of PENDING sends, retention; and
the read of the stuck runs that stall instances (statemachine/stuck.py decides, in the jobs' unit
of work: services/app/jobs.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence import changelog
from adapters.persistence.messages import save_message
from adapters.persistence.retention import Pruner
from adapters.persistence.rows import DELIVERY_STATUSES, HANDED_OVER, PENDING, STUCK, UNSTUCK, message_from_row, utcnow
from adapters.persistence.schema import (
    events,
    instances,
    messages,
    open_messages,
)
from adapters.persistence.store_base import StoreBase
from statemachine import stuck as stuck_rule
from statemachine.domain import (
    MessageRecord,
    Reason,
)
from statemachine.message_machine import (
    outcome_unknown,
)
from statemachine.ports import (
    PruneReport,
    RetentionPolicy,
)
from statemachine.store_ports import StuckRun


def _aware(value: Any) -> datetime | None:
    """A timestamp from a scalar subquery (SQLite returns its text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Sweeps(StoreBase):
    """What the sweeper and the reconciler write."""

    def __init__(self, engine: AsyncEngine, *, group_commit_window: float = 0.0) -> None:
        super().__init__(engine, group_commit_window=group_commit_window)
        self._pruner = Pruner(engine)

    async def mark_stuck(self, cutoff: datetime, *, limit: int = 500) -> list[MessageRecord]:
        """SENT (or QUEUED) messages older than `cutoff` become stuck, each exactly once across replicas.

        The UPDATE's own `stuck_at IS NULL` re-check (and SKIP LOCKED on Postgres) makes two
        sweepers racing on one row return it to only one of them.
        """
        now = utcnow()
        # Candidates from the open-work index; the lock is taken on the messages (never on
        # open_messages first): the status paths lock a message and then touch its open row.
        due = (
            select(open_messages.c.message_id)
            .where(UNSTUCK, open_messages.c.sent_at < cutoff)
            .order_by(open_messages.c.sent_at)
            .limit(limit)
        )
        candidates = (
            select(messages.c.id)
            .where(
                messages.c.id.in_(due.scalar_subquery()),
                messages.c.state.in_(HANDED_OVER),
                messages.c.stuck_at.is_(None),
            )
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(messages)
            .where(
                messages.c.id.in_(candidates.scalar_subquery()),
                messages.c.state.in_(HANDED_OVER),
                messages.c.stuck_at.is_(None),
            )
            .values(stuck_at=now)
            .returning(*messages.c)
        )
        async with self.transaction() as conn:
            stuck = [message_from_row(r) for r in await conn.execute(stmt)]
            # What was written is the rule's (statemachine/stuck.py): stuck_at = now, one entry each.
            marks = [
                stuck_rule.mark(m, m.state, now)
                for m in stuck
                if stuck_rule.becomes_stuck(m.state, m.sent_at, None, cutoff)
            ]
            await changelog.append(conn, [m.change for m in marks])
            return stuck

    async def reconcile_pending(self, cutoff: datetime, *, limit: int = 200) -> list[MessageRecord]:
        """PENDING since before `cutoff`: the process died between storing the message and
        recording the provider's answer. W-API offers no lookup of a message we hold no id for,
        so the honest verdict is FAILED/OUTCOME_UNKNOWN — never SENT, never silently dropped."""
        out: list[MessageRecord] = []
        async with self.transaction() as conn:
            rows = (
                await conn.execute(
                    select(messages)
                    .where(
                        messages.c.id.in_(
                            select(open_messages.c.message_id)
                            .where(open_messages.c.state == PENDING, open_messages.c.since < cutoff)
                            .order_by(open_messages.c.since)
                            .limit(limit)
                            .scalar_subquery()
                        ),
                        messages.c.state == PENDING,
                        messages.c.updated_at < cutoff,
                    )
                    .order_by(messages.c.updated_at)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            now = utcnow()
            for row in rows:
                msg = message_from_row(row)
                after = outcome_unknown(msg, at=now)
                if after is not None:
                    await save_message(conn, msg, after)
                    out.append(after)
        return out

    async def prune(self, policy: RetentionPolicy) -> PruneReport:
        """One retention run (see retention.py); skipped while another replica prunes."""
        return await self._pruner.run_once(policy)


async def stuck_runs_in(conn: AsyncConnection, instance_ids: Sequence[str], threshold: int) -> dict[str, StuckRun]:
    """The stuck runs of these instances, one read for all of them (the jobs' unit of work,
    services/app/jobs.py `stall_stuck_runs`, decides with statemachine/stuck.py and stalls the
    due ones in the same transaction).

    The run is derived from the data, never counted on the hot path (the rule:
    statemachine/stuck.py `stalls`): per instance its `threshold` newest stuck messages sent
    after its latest stall ended (open-work index; `instances.stall_ended_at`: after an
    operator's clear or a reconnection the messages stuck during the stall must not stall it
    again at once), and its latest delivery status after the oldest of them (one ordered look
    at its events). Read in proportion to the open work of these instances.
    """
    if not instance_ids:
        return {}
    om = open_messages.c
    since_stall = or_(instances.c.stall_ended_at.is_(None), om.sent_at > instances.c.stall_ended_at)
    ranked = (
        select(
            om.instance_id,
            om.sent_at,
            func.row_number().over(partition_by=om.instance_id, order_by=om.sent_at.desc()).label("rank"),
        )
        .select_from(open_messages.join(instances, instances.c.id == om.instance_id))
        .where(STUCK, om.instance_id.in_(sorted(set(instance_ids))), since_stall)
        .subquery()
    )
    newest = select(ranked).where(ranked.c.rank <= threshold).cte("newest")
    oldest = newest.alias("oldest")
    last_delivery = (
        select(events.c.received_at)
        .where(
            events.c.instance_id == oldest.c.instance_id,
            events.c.received_at > oldest.c.sent_at,
            events.c.route == literal_column("'MESSAGE_STATUS'"),
            events.c.status.in_(DELIVERY_STATUSES),
        )
        .order_by(events.c.received_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(newest.c.instance_id, newest.c.sent_at, last_delivery.label("last_delivery"))
        .join(oldest, and_(oldest.c.instance_id == newest.c.instance_id, oldest.c.rank == threshold))
        .order_by(newest.c.instance_id)
    )
    runs: dict[str, StuckRun] = {}
    for r in await conn.execute(query):
        run = runs.setdefault(r.instance_id, StuckRun([], _aware(r.last_delivery)))
        run.sent.append(r.sent_at)
    return runs


async def stalls_with_deliveries_in(conn: AsyncConnection) -> dict[str, tuple[datetime, datetime | None]]:
    """Each stalled instance: when its stall began and its newest delivery status since a little
    before (statemachine/stuck.py `contradicts` decides). Stalled instances are few; one ordered
    look at each one's events (ix_events_instance_id_received_at)."""
    stalled = (
        await conn.execute(
            select(instances.c.id, instances.c.state_changed_at).where(
                instances.c.reason == Reason.DELIVERY_STALLED.value, instances.c.state_changed_at.is_not(None)
            )
        )
    ).all()
    found: dict[str, tuple[datetime, datetime | None]] = {}
    for row in stalled:
        stalled_at = _aware(row.state_changed_at)
        assert stalled_at is not None
        delivered = (
            await conn.execute(
                select(func.max(events.c.received_at)).where(
                    events.c.instance_id == row.id,
                    events.c.received_at > stalled_at - stuck_rule.STALL_RACE_WINDOW,
                    events.c.route == literal_column("'MESSAGE_STATUS'"),
                    events.c.status.in_(DELIVERY_STATUSES),
                )
            )
        ).scalar()
        found[row.id] = (stalled_at, _aware(delivered))
    return found
