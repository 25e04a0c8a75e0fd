"""Parked statuses: the one owner of the rule. A provider's status can arrive before its send's
PENDING → SENT commit (the provider is fast); it is then stored parked (the event row says so,
webhook_events.py). Whichever of the two commits comes second must apply it, so each of the two
writes re-checks with `apply_parked` right after its own commit: the SENT write
(send_outcomes.py, when its batch saw a parked row waiting) and the parking write
(webhook_events.py `ingest`); one of the two always sees the other. The locked send path applies
them inside its own transaction (`apply_parked_in`). The sweep (services/app/jobs.py) is the
backstop for a process that stopped between a commit and its re-check: `apply_parked()` with no
id, every recent parked row whose message exists. No use case decides when to re-check."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from adapters.persistence import changelog
from adapters.persistence.instances import lift_stall
from adapters.persistence.messages import locked_message
from adapters.persistence.parked_failures import parked_failure
from adapters.persistence.rows import PENDING, utcnow
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
)
from statemachine.events import EventReason
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

PARKED_EXISTS = (
    select(events.c.id)
    .where(
        events.c.provider_message_id == bindparam("pid"),
        events.c.instance_id == bindparam("iid"),
        events.c.parked,
    )
    .limit(1)
)


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


class ParkedStatuses(StoreBase):
    """`apply_parked`: the re-check after a commit that may have lost the race (see the module)."""

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
