"""Webhook events and the statuses they carry: each event stored raw with its outcome, status
webhooks group-committed through the status plan (statemachine/status_plan.py) and the two
statement builders of status_lane.py, connection events through the instance writer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence import changelog, pg_fast
from adapters.persistence.batching import Batcher
from adapters.persistence.instances import apply_trigger_in, lift_stall
from adapters.persistence.parked import ParkedStatuses
from adapters.persistence.rows import utcnow
from adapters.persistence.schema import (
    chat_statuses,
    events,
)
from adapters.persistence.status_lane import (
    PgStatusStatements,
    SqlStatusStatements,
    StatusStatements,
)
from statemachine import changes as change_log
from statemachine.changes import ChangeKind
from statemachine.events import EventReason, ProviderEvent, Route
from statemachine.ids import time_ordered_id
from statemachine.instance_machine import connection_event_trigger, inbound_event_trigger
from statemachine.ports import (
    ConcurrentUpdateError,
    IngestResult,
)
from statemachine.status_plan import (
    StatusEvent,
    StatusOutcome,
    StatusStep,
    first_per_key,
    plan_statuses,
)

_StatusItem = tuple[ProviderEvent, bytes, dict[str, str], datetime]


def _event_row(
    event: ProviderEvent, event_id: str, reason: str, received_at: datetime, payload: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    """The one row format of `events` (not parked; the caller says when it is)."""
    return {
        "id": event_id,
        "dedupe_key": event.dedupe_key,
        "received_at": received_at,
        "route": event.route.value,
        "reason": str(reason)[:96],
        "instance_id": event.instance_id,
        "provider_message_id": event.provider_message_id,
        "status": event.status.value if event.status else None,
        "parked": False,
        "payload": payload,
        "headers": json.dumps(headers, sort_keys=True),
        "duplicates": 0,
    }


def _inbound_change(
    event: ProviderEvent, event_id: str, payload: bytes, received_at: datetime
) -> change_log.Change | None:
    """A customer's message (webhookReceived) or one sent from the phone itself (a delivery
    event the API did not originate) goes into the change log with its raw body."""
    if event.instance_id is None:
        return None
    if event.route is Route.RECEIVED:
        kind = ChangeKind.MESSAGE_RECEIVED
    elif event.route is Route.DELIVERY and not event.from_api:
        kind = ChangeKind.MESSAGE_FROM_PHONE
    else:
        return None
    try:
        body: Any = json.loads(payload)
    except ValueError:  # parsed once already; kept as text if it ever is not JSON
        body = payload.decode("utf-8", "replace")
    return change_log.provider_message(
        kind,
        event.instance_id,
        event_id=event_id,
        provider_message_id=event.provider_message_id,
        chat_id=event.chat_id,
        phone=event.phone,
        moment=event.moment,
        received_at=received_at,
        body=body,
        message=event.inbound,
    )


class _Duplicate(Exception):
    pass


def _names_status(event: ProviderEvent) -> bool:
    """An event the status plan applies: it names its instance, its message and a status."""
    return event.status is not None and event.instance_id is not None and event.provider_message_id is not None


def _is_status(event: ProviderEvent) -> bool:
    """A status webhook: group-committed."""
    return event.route is Route.MESSAGE_STATUS and _names_status(event)


def _status_event(item: _StatusItem) -> StatusEvent:
    event, _payload, _headers, received_at = item
    assert event.instance_id is not None
    assert event.provider_message_id is not None
    assert event.status is not None
    return StatusEvent(
        event.instance_id,
        event.provider_message_id,
        event.status,
        event.moment or received_at,
        failure_reason=event.failure_reason,
        failure_detail=event.failure_detail,
    )


class EventStore(ParkedStatuses):
    """The `events` rows and what they apply."""

    def __init__(self, engine: AsyncEngine, *, group_commit_window: float = 0.0) -> None:
        super().__init__(engine, group_commit_window=group_commit_window)
        self._status_lease = pg_fast.Lease(engine)
        self._insert_event = self._insert(events).on_conflict_do_nothing(index_elements=["dedupe_key"])
        self._insert_event_returning = self._insert_event.returning(events.c.id)
        self._status_batcher: Batcher[_StatusItem, IngestResult] = Batcher(
            self._ingest_statuses, self._ingest_status_alone, window=group_commit_window
        )

    async def aclose(self) -> None:
        await self._status_lease.aclose()
        await super().aclose()

    async def event_stored(self, dedupe_key: str) -> bool:
        """Whether an event with this dedupe key is stored (unique index on dedupe_key)."""
        async with self.engine.connect() as conn:
            found = await conn.execute(select(events.c.id).where(events.c.dedupe_key == dedupe_key).limit(1))
            return found.first() is not None

    async def last_event_received_at(self, instance_id: str) -> datetime | None:
        """When the newest stored event of this instance arrived (index on instance_id, received_at)."""
        query = select(func.max(events.c.received_at)).where(events.c.instance_id == instance_id)
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        if isinstance(value, str):  # SQLite's max() loses the column type
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    async def ingest(
        self, event: ProviderEvent, payload: bytes, headers: dict[str, str], received_at: datetime
    ) -> IngestResult:
        """Applies one provider event and stores it raw, in one transaction.

        The event row is inserted last, with its final reason; when its dedupe key already
        exists the whole transaction rolls back and the event is reported as a duplicate. On
        Postgres a concurrent twin waits on the row lock / unique index, so it is applied once.
        """
        if _is_status(event):
            result = await self._status_batcher.submit((event, payload, headers, received_at))
        else:
            result = await self._ingest_one(event, payload, headers, received_at)
        if result.reason == EventReason.UNKNOWN_MESSAGE and event.provider_message_id and not result.duplicate:
            # Parked: its message may have turned SENT while we looked. Re-checked after our commit;
            # the sender re-checks after its own, so one of the two always applies it (parked.py).
            # Applied here: the changes go with the webhook's, linked to their send attempt.
            result.message_changes.extend(await self.apply_parked(event.provider_message_id))
        return result

    async def _ingest_one(
        self, event: ProviderEvent, payload: bytes, headers: dict[str, str], received_at: datetime
    ) -> IngestResult:
        if _names_status(event):
            # A status (a status webhook, or a chat event that names a message and a status): the
            # status plan applies it and its write stores the event row.
            return await self._ingest_status_locked((event, payload, headers, received_at))
        event_id = time_ordered_id()
        result = IngestResult(event_id, event.route, event.reason, event.instance_id)
        try:
            async with self.transaction() as conn:
                await self._route(conn, event, received_at, result)
                await self._event_extras(conn, event, event_id, payload, received_at)
                row = _event_row(event, event_id, result.reason, received_at, payload, headers)
                inserted = await conn.execute(self._insert_event, row)
                if inserted.rowcount != 1:
                    raise _Duplicate
        except _Duplicate:
            return await self._count_duplicate(event, event_id)
        return result

    async def _event_extras(
        self, conn: AsyncConnection, event: ProviderEvent, event_id: str, payload: bytes, received_at: datetime
    ) -> None:
        """What an event stores besides its row: the inbound change-log entry, the chat status."""
        inbound = _inbound_change(event, event_id, payload, received_at)
        if inbound is not None:
            await changelog.append(conn, [inbound])
        if event.route is Route.CHAT_STATUS and event.instance_id:
            await conn.execute(
                chat_statuses.insert().values(
                    event_id=event_id,
                    instance_id=event.instance_id,
                    chat_id=event.chat_id,
                    status=event.raw_status,
                    connected_phone=event.phone,
                    connected_lid=event.lid,
                    moment=event.moment,
                    received_at=received_at,
                )
            )

    async def _count_duplicate(self, event: ProviderEvent, event_id: str) -> IngestResult:
        async with self.transaction() as conn:
            row = (
                await conn.execute(
                    update(events)
                    .where(events.c.dedupe_key == event.dedupe_key)
                    .values(duplicates=events.c.duplicates + 1)
                    .returning(events.c.id, events.c.reason)
                )
            ).first()
        return IngestResult(
            row.id if row else event_id,
            event.route,
            row.reason if row else event.reason,
            event.instance_id,
            duplicate=True,
        )

    async def _ingest_statuses(
        self, items: list[_StatusItem], statements: StatusStatements | None = None
    ) -> list[IngestResult]:
        """Group commit of message-status events, on both databases: rounds of read → plan → write.

        The plan (statemachine/status_plan.py) decides; the statement builder stores it with
        compare-and-set: on PostgreSQL one read and one atomic statement per round on the leased
        connection (status_lane.PgStatusStatements), on SQLite one transaction per round
        (SqlStatusStatements). An event whose key already exists (an earlier call, another
        replica, this very batch) is a duplicate and applies nothing; a status for a message not
        stored yet is parked; a status whose message moved meanwhile is planned again on the fresh
        row. A delivery that lifts a stall takes the locked one-event transaction (its instance
        transition goes in the same transaction), as does anything still racing after a few rounds.
        """
        statements = statements or (
            PgStatusStatements(self._status_lease)
            if self._pg
            else SqlStatusStatements(self._insert_event_returning, engine=self.engine)
        )
        results = [IngestResult(time_ordered_id(), event.route, event.reason, event.instance_id) for event, *_ in items]
        deferred, duplicates, _steps = await self._run_statuses(statements, items, results, allow_lift=False)
        for index in deferred:
            results[index] = await self._ingest_status_locked(items[index])
        for index in sorted(duplicates):
            results[index] = await self._count_duplicate(items[index][0], results[index].event_id)
        return results

    async def _ingest_status_alone(self, item: _StatusItem) -> IngestResult:
        return await self._ingest_status_locked(item)

    async def _ingest_status_locked(self, item: _StatusItem) -> IngestResult:
        """One status event in one transaction, its message locked: the same plan and the same
        write as the batch lanes, plus the stall lift (REPORT_DELIVERY_RESUMED) next to it."""
        event, payload, _headers, received_at = item
        result = IngestResult(time_ordered_id(), event.route, event.reason, event.instance_id)
        try:
            async with self.transaction() as conn:
                statements = SqlStatusStatements(self._insert_event_returning, conn=conn)
                deferred, duplicates, steps = await self._run_statuses(statements, [item], [result], allow_lift=True)
                if deferred:
                    raise ConcurrentUpdateError(str(event.provider_message_id))  # cannot move under the lock
                if duplicates:
                    raise _Duplicate
                for step in steps:
                    if step.lifts_stall and step.after is not None:
                        await lift_stall(conn, step.after.instance_id, result.instance_changes)
                await self._event_extras(conn, event, result.event_id, payload, received_at)
        except _Duplicate:
            return await self._count_duplicate(event, result.event_id)
        return result

    async def _run_statuses(
        self, statements: StatusStatements, items: list[_StatusItem], results: list[IngestResult], *, allow_lift: bool
    ) -> tuple[list[int], list[int], list[StatusStep]]:
        """Rounds until every event is stored, a duplicate or deferred: (deferred, duplicates, stored steps)."""
        todo = list(range(len(items)))
        deferred: list[int] = []
        duplicates: list[int] = []
        stored: list[StatusStep] = []

        def key_of(index: int) -> tuple[str | None, str | None]:
            return (items[index][0].instance_id, items[index][0].provider_message_id)

        for _ in range(5):
            if not todo:
                break
            this_round, later = first_per_key(todo, key_of)
            moved = await self._status_round(
                statements, items, results, this_round, allow_lift, deferred, duplicates, stored
            )
            todo = moved + later
        deferred.extend(todo)
        return deferred, duplicates, stored

    async def _status_round(
        self,
        statements: StatusStatements,
        items: list[_StatusItem],
        results: list[IngestResult],
        indices: list[int],
        allow_lift: bool,
        deferred: list[int],
        duplicates: list[int],
        stored: list[StatusStep],
    ) -> list[int]:
        """One read, one plan, one write for these events (distinct messages); returns those to re-plan."""
        events = [(index, _status_event(items[index])) for index in indices]
        async with statements.session() as session:
            read = await session.read([event.provider_message_id for _, event in events])
            facts = {(f.instance_id, str(f.provider_message_id)): f for f in read}
            plan = plan_statuses(events, facts, now=utcnow(), allow_lift=allow_lift)
            rows: list[dict[str, Any]] = []
            for step in plan.steps:
                if step.outcome is StatusOutcome.DEFER:
                    deferred.append(step.index)
                    continue
                event, payload, headers, received_at = items[step.index]
                result = results[step.index]
                result.reason = step.event_reason
                row = _event_row(event, result.event_id, result.reason, received_at, payload, headers)
                row.update(parked=step.parked, message_id=step.message_id, step=step.index)
                rows.append(row)
            outcome = await session.write(plan, rows)
        moved: list[int] = []
        for step in plan.steps:
            if step.outcome is StatusOutcome.DEFER:
                continue
            result = results[step.index]
            if result.event_id in outcome.stored:
                if step.message_change is not None:
                    result.message_changes.append(step.message_change)
                stored.append(step)
            elif step.message_id is not None and step.message_id not in outcome.locked:
                moved.append(step.index)
            else:
                duplicates.append(step.index)
        return moved

    async def _route(
        self, conn: AsyncConnection, event: ProviderEvent, received_at: datetime, result: IngestResult
    ) -> None:
        """Applies a connection event to its instance (statuses go through the status plan)."""
        if event.instance_id is None:
            return
        trigger = None
        if event.route in (Route.CONNECTION, Route.DISCONNECTION):
            trigger = connection_event_trigger(event.connected, event.failure_reason)
        elif event.route is Route.RECEIVED:
            trigger = inbound_event_trigger(event.failure_reason)
        if trigger is not None:
            instance_change = await apply_trigger_in(
                conn, event.instance_id, trigger, "webhook", event.phone, None, received_at
            )
            if instance_change is None:
                result.reason = EventReason.UNKNOWN_INSTANCE
            else:
                changed = instance_change.decision.changed
                result.reason = EventReason.APPLIED if changed else EventReason.RECORDED
                if changed:
                    result.instance_changes.append(instance_change)
