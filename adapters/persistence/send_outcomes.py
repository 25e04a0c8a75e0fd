"""A send's outcome on its message: PENDING → SENT (the batched fast path, its SQLAlchemy and
asyncpg spellings side by side) or the locked path for every outcome, and the parked statuses
that beat a SENT commit, applied right after it (the one place of that rule)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence import changelog, history, pg_fast
from adapters.persistence.batching import Batcher
from adapters.persistence.instances import lift_stall
from adapters.persistence.messages import locked_message, save_message
from adapters.persistence.parked_failures import parked_failure
from adapters.persistence.rows import PENDING, message_from_row, message_log_rows, utcnow
from adapters.persistence.schema import (
    events,
    instances,
    messages,
)
from adapters.persistence.status_lane import (
    CAS_STATUS,
    cas_params,
)
from adapters.persistence.store_base import StoreBase
from statemachine.domain import (
    MessageRecord,
    MessageState,
    Reason,
)
from statemachine.events import EventReason
from statemachine.message_machine import (
    send_outcome,
)
from statemachine.ports import (
    ConcurrentUpdateError,
    MessageChange,
)
from statemachine.status_plan import (
    StatusEvent,
    StatusFacts,
    merge,
    plan_chain,
)

# How far back the sweep looks for parked statuses whose message has appeared meanwhile: a
# status is parked only while its send's SENT commit is in flight (seconds); older parked rows
# belong to messages this service never sent (e.g. typed on the phone) and stay parked.
PARKED_HORIZON = timedelta(hours=1)

# PENDING → SENT as the message machine decided it: the SQLAlchemy spelling (pg_fast.MARK_SENT is
# the same write over arrays, on the leased asyncpg connection).
MARK_SENT = (
    update(messages)
    .where(
        messages.c.id == bindparam("b_id"),
        messages.c.version == bindparam("b_version"),
        messages.c.state == MessageState.PENDING.value,
    )
    .values(
        state=MessageState.SENT.value,
        provider_message_id=bindparam("provider_message_id"),
        sent_at=bindparam("sent_at"),
        updated_at=bindparam("updated_at"),
        history=history.append(messages.c.history, "entries"),
        version=bindparam("version"),
    )
)
_PARKED_EXISTS = (
    select(events.c.id)
    .where(
        events.c.provider_message_id == bindparam("pid"),
        events.c.instance_id == bindparam("iid"),
        events.c.parked,
    )
    .limit(1)
)


def _sent_params(msg: MessageRecord, after: MessageRecord) -> dict[str, Any]:
    """The SENT write of `after` (send_outcome's record) over `msg` as stored."""
    return {
        "b_id": msg.id,
        "b_version": msg.version,
        "provider_message_id": after.provider_message_id,
        "sent_at": after.sent_at,
        "updated_at": after.updated_at,
        "entries": history.entries_json(after.history[len(msg.history) :]),
        "version": after.version,
        "iid": msg.instance_id,
        "log": message_log_rows(msg, after),
    }


def _status_facts(msg: MessageRecord, instance_reason: str) -> StatusFacts:
    return StatusFacts(
        id=msg.id,
        instance_id=msg.instance_id,
        to=msg.to,
        provider_message_id=msg.provider_message_id,
        state=msg.state,
        attempts=msg.attempts,
        version=msg.version,
        created_at=msg.created_at,
        sent_at=msg.sent_at,
        failure_reason=msg.failure_reason,
        failure_detail=msg.failure_detail,
        trace_id=msg.trace_id,
        span_id=msg.span_id,
        instance_reason=instance_reason,
    )


async def write_sent(conn: AsyncConnection, params: dict[str, Any]) -> bool:
    """PENDING → SENT as the message machine decided it (send_outcome), compare-and-set on
    version and state: the SQLAlchemy spelling of the one SENT write, for record_sent on SQLite
    and for record_send_outcome on both; pg_fast.MARK_SENT is the same write over arrays."""
    if (await conn.execute(MARK_SENT, params)).rowcount != 1:
        return False
    await changelog.append_rows(conn, params["log"])
    return True


async def apply_parked_in(conn: AsyncConnection, msg: MessageRecord) -> list[MessageChange]:
    """Parked statuses of `msg` (as stored), through the status plan in rank order, written as
    one compare-and-set update; a delivery among them lifts a stall like any other."""
    rows = (
        await conn.execute(
            select(events.c.id, events.c.status, events.c.received_at, events.c.payload).where(
                events.c.provider_message_id == msg.provider_message_id,
                events.c.instance_id == msg.instance_id,  # another instance's status never applies
                events.c.parked,
            )
        )
    ).all()
    if not rows or msg.provider_message_id is None:
        return []
    instance = (
        await conn.execute(select(instances.c.reason, instances.c.provider).where(instances.c.id == msg.instance_id))
    ).first()
    facts = _status_facts(msg, str(instance.reason or "") if instance else "")
    pid = msg.provider_message_id
    late: list[StatusEvent] = []
    for r in rows:
        state = MessageState(r.status)
        # A FAILED keeps its normalized reason: read again from its body (the columns lack it).
        failure = (
            parked_failure(instance.provider if instance else None, r.payload, pid)
            if state is MessageState.FAILED
            else ("", "")
        )
        late.append(StatusEvent(msg.instance_id, pid, state, r.received_at, "webhook", *failure))
    steps = plan_chain(facts, late, now=utcnow())
    merged = merge(steps)
    assert merged is not None
    if (await conn.execute(CAS_STATUS, cas_params(merged))).rowcount != 1:
        raise ConcurrentUpdateError(msg.id)
    await changelog.append_rows(conn, [changelog.change_row(c) for step in steps for c in step.log])
    await conn.execute(
        update(events)
        .where(events.c.id.in_([r.id for r in rows]))
        .values(parked=False, reason=EventReason.APPLIED.value + ":LATE")
    )
    out: list[MessageChange] = []
    for step in steps:
        if step.message_change is not None:
            out.append(step.message_change)
    if any(step.lifts_stall for step in steps):
        await lift_stall(conn, msg.instance_id, [])
    return out


class SendOutcomes(StoreBase):
    """Records what the provider answered to a send."""

    def __init__(self, engine: AsyncEngine, *, group_commit_window: float = 0.0) -> None:
        super().__init__(engine, group_commit_window=group_commit_window)
        self._sent_lease = pg_fast.Lease(engine)
        self._sent_batcher: Batcher[dict[str, Any], tuple[bool, bool]] = Batcher(
            self._mark_sent_batch, self._mark_sent_alone, window=group_commit_window
        )

    async def aclose(self) -> None:
        await self._sent_lease.aclose()
        await super().aclose()

    async def _message_now(self, message_id: str) -> MessageRecord | None:
        async with self._auto.connect() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
        return message_from_row(row) if row else None

    async def record_outcome(
        self,
        msg: MessageRecord,
        *,
        provider_message_id: str | None,
        failure: Reason | None,
        detail: str,
        source: str,
        queue_id: str | None = None,
    ) -> MessageRecord:
        """The one call for a send's outcome. An accepted send of the row as this process inserted
        it takes the batched PENDING → SENT lane; anything else (a failure, QUEUED, a row that
        moved meanwhile: a reconciler, another replica) the locked path."""
        if failure is None and provider_message_id and not queue_id:  # a queued send waits for its ack
            fast = await self._record_sent(msg, provider_message_id, source=source)
            if fast is not None:
                return fast
        stored, _changes = await self.record_send_outcome(
            msg.id,
            provider_message_id=provider_message_id if failure is None else None,
            failure=failure,
            detail=detail,
            source=source,
            queue_id=queue_id if failure is None else None,
        )
        return stored

    async def _record_sent(self, msg: MessageRecord, provider_message_id: str, *, source: str) -> MessageRecord | None:
        """PENDING → SENT in one conditional UPDATE, from the row this process just inserted.

        None when the row moved meanwhile (a reconciler, another replica): then record_outcome
        takes the locked path. A status that beat this commit is applied right after (parked events).
        """
        after = send_outcome(
            msg, provider_message_id=provider_message_id, failure=None, detail="", source=source, at=utcnow()
        )
        if after is None or after.state is not MessageState.SENT:
            return None
        params = _sent_params(msg, after)
        updated, parked = await self._sent_batcher.submit(params)
        if not updated:
            return None
        if parked:
            await self.apply_parked(provider_message_id)
            return await self._message_now(msg.id)
        return after

    async def _mark_sent_alone(self, params: dict[str, Any]) -> tuple[bool, bool]:
        """(updated, a parked status waits for it). The parked check runs after the UPDATE has
        committed: the ingest side checks after its own commit, so one of the two sees the other."""
        async with self.transaction() as conn:
            if not await write_sent(conn, params):
                return False, False
        async with self._auto.connect() as conn:
            parked = await conn.execute(_PARKED_EXISTS, {"pid": params["provider_message_id"], "iid": params["iid"]})
            return True, parked.first() is not None

    async def _mark_sent_batch(self, items: list[dict[str, Any]]) -> list[tuple[bool, bool]]:
        """The same for a batch, on Postgres: one UPDATE over arrays, then one parked lookup.
        On SQLite: one transaction (one commit) for the batch's compare-and-set UPDATEs and their
        change-log rows, then one parked lookup after the commit, as alone."""
        if not self._pg:
            return await self._mark_sent_batch_sql(items)
        columns = [
            [item[name] for item in items]
            for name in ("b_id", "b_version", "provider_message_id", "sent_at", "entries")
        ]
        log_rows = [entry for item in items for entry in item["log"]]
        async with self._sent_lease.driver(pg_fast.MARK_SENT) as driver:
            updated = {r[0] for r in await driver.fetch(pg_fast.MARK_SENT, *columns, *changelog.as_columns(log_rows))}
            pids = sorted({item["provider_message_id"] for item in items if item["b_id"] in updated})
            parked = {(r[0], r[1]) for r in await driver.fetch(pg_fast.PARKED_FOR, pids)} if pids else set()
        return [(item["b_id"] in updated, (item["iid"], item["provider_message_id"]) in parked) for item in items]

    async def _mark_sent_batch_sql(self, items: list[dict[str, Any]]) -> list[tuple[bool, bool]]:
        updated: list[bool] = []
        async with self.transaction() as conn:
            for item in items:
                updated.append((await conn.execute(MARK_SENT, item)).rowcount == 1)
            await changelog.append_rows(
                conn, [entry for item, moved in zip(items, updated, strict=True) if moved for entry in item["log"]]
            )
        pids = sorted({item["provider_message_id"] for item, moved in zip(items, updated, strict=True) if moved})
        parked: set[tuple[str, str]] = set()
        if pids:
            async with self._auto.connect() as conn:
                rows = await conn.execute(
                    select(events.c.instance_id, events.c.provider_message_id).where(
                        events.c.parked, events.c.provider_message_id.in_(pids)
                    )
                )
                parked = {(r[0], r[1]) for r in rows}
        return [
            (moved, moved and (item["iid"], item["provider_message_id"]) in parked)
            for item, moved in zip(items, updated, strict=True)
        ]

    async def apply_parked(self, provider_message_id: str | None = None) -> list[MessageChange]:
        """Applies parked statuses whose message now exists (all of them when no id is given);
        returns the changes (each with its send attempt's span, for a link).

        Closes the race where a status is parked while the SENT update commits: the send path
        calls it for its own id, the sweeper for any left over.
        """
        waiting = select(events.c.provider_message_id, events.c.instance_id).where(events.c.parked)
        if provider_message_id is not None:
            waiting = waiting.where(events.c.provider_message_id == provider_message_id)
        else:
            waiting = waiting.where(events.c.received_at > utcnow() - PARKED_HORIZON)
        # The parked rows first (a partial index), then their messages by provider id: a generic
        # plan must not start from the messages.
        parked = waiting.limit(1000).cte("parked").prefix_with("MATERIALIZED", dialect="postgresql")
        query = (
            select(messages.c.id)
            .join(
                parked,
                and_(
                    parked.c.provider_message_id == messages.c.provider_message_id,
                    parked.c.instance_id == messages.c.instance_id,
                ),
            )
            .where(messages.c.state != PENDING)
            .distinct()
            .limit(200)
        )
        async with self._auto.connect() as conn:
            ids = [r.id for r in await conn.execute(query)]
        applied: list[MessageChange] = []
        for message_id in ids:
            async with self.transaction() as conn:
                msg = await locked_message(conn, message_id)
                if msg is None:
                    continue
                applied += await apply_parked_in(conn, msg)
        return applied

    async def record_send_outcome(
        self,
        message_id: str,
        *,
        provider_message_id: str | None,
        failure: Reason | None,
        detail: str,
        source: str,
        queue_id: str | None = None,
    ) -> tuple[MessageRecord, list[MessageChange]]:
        """PENDING → SENT (with the provider's id) or → FAILED (with the reason).

        A status webhook can beat this commit (the provider is fast): such events were parked
        and are applied here, in the same transaction.
        """
        async with self.transaction() as conn:
            msg = await locked_message(conn, message_id)
            if msg is None:
                raise LookupError(message_id)
            after = send_outcome(
                msg,
                provider_message_id=provider_message_id,
                failure=failure,
                detail=detail,
                source=source,
                at=utcnow(),
                queue_id=queue_id,
            )
            if after is None:
                return msg, []  # a reconciler got there first; its verdict stands
            changes = [MessageChange(after.id, after.history[-1], after.trace_id, after.span_id, after.sent_at)]
            if after.state is not MessageState.SENT:
                await save_message(conn, msg, after)  # FAILED or QUEUED
            elif not await write_sent(conn, _sent_params(msg, after)):
                raise ConcurrentUpdateError(msg.id)  # the row is locked: cannot happen
            if after.state is MessageState.SENT or after.provider_message_id:  # also QUEUED with an id
                late = await apply_parked_in(conn, after)
                if late:
                    changes += late
                    after = await locked_message(conn, message_id) or after
            return after, changes
