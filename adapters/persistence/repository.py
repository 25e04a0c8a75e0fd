"""All SQL of the service. Short transactions; every state change is compare-and-set.

Row locks: Postgres takes `SELECT … FOR UPDATE` on the row it is about to change; SQLite has no
row locks, so its engine serializes writers with BEGIN IMMEDIATE (see db.py). The version
column is checked on every UPDATE either way, so a lost race can never be silently overwritten.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import orjson
from sqlalchemy import Row, and_, bindparam, func, literal_column, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnClause

from adapters.persistence import changelog, history, pg_fast
from adapters.persistence.retention import Pruner
from adapters.persistence.schema import (
    chat_statuses,
    events,
    instance_stuck_counts,
    instance_transitions,
    instances,
    messages,
    open_messages,
    recovery_actions,
)
from adapters.persistence.status_lane import (
    CAS_STATUS,
    PgStatusStatements,
    SqlStatusStatements,
    StatusStatements,
    cas_params,
)
from statemachine import changes as change_log
from statemachine import stuck as stuck_rule
from statemachine.changes import ChangeCursor, ChangeKind, ChangePage
from statemachine.domain import (
    AUTOMATIC_REQUESTERS,
    InstanceRecord,
    InstanceState,
    MessageKind,
    MessageRecord,
    MessageState,
    Plan,
    Reason,
    RecoveryAction,
    StateChange,
)
from statemachine.events import EventReason, ProviderEvent, Route
from statemachine.ids import time_ordered_id
from statemachine.instance_machine import InstanceTrigger, connection_event_trigger, decide_instance
from statemachine.message_machine import (
    DELIVERED_OR_LATER,
    MessageTrigger,
    outcome_unknown,
    send_outcome,
    transition_message,
)
from statemachine.ports import (
    AckSample,
    ConcurrentUpdateError,
    IngestResult,
    InstanceChange,
    MessageChange,
    PruneReport,
    ReceiptSample,
    RecoveryReservation,
    RetentionPolicy,
    SendSample,
)
from statemachine.status_plan import (
    StatusEvent,
    StatusFacts,
    StatusOutcome,
    StatusStep,
    first_per_key,
    merge,
    plan_chain,
    plan_statuses,
)

# States spelled as SQL literals where a partial index must apply: with a bound parameter a
# prepared statement's generic plan cannot prove the index predicate and scans instead.
_PENDING: ColumnClause[str] = literal_column("'PENDING'")
# The states the stuck rule applies to (statemachine/stuck.py), as literals.
_HANDED_OVER: list[ColumnClause[str]] = [literal_column(f"'{s.value}'") for s in stuck_rule.HANDED_OVER]
_STUCK = and_(open_messages.c.state.in_(_HANDED_OVER), open_messages.c.stuck_at.is_not(None))
_UNSTUCK = and_(open_messages.c.state.in_(_HANDED_OVER), open_messages.c.stuck_at.is_(None))
_DELIVERY_STATUSES: list[ColumnClause[str]] = [literal_column(f"'{s.value}'") for s in sorted(DELIVERED_OR_LATER)]
# How far back the sweep looks for parked statuses whose message has appeared meanwhile: a
# status is parked only while its send's SENT commit is in flight (seconds); older parked rows
# belong to messages this service never sent (e.g. typed on the phone) and stay parked.
PARKED_HORIZON = timedelta(hours=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- row mapping -----------------------------------------------------------------------------


def _message(row: Row[Any]) -> MessageRecord:
    m = row._mapping
    return MessageRecord(
        id=m["id"],
        instance_id=m["instance_id"],
        to=m["recipient"],
        kind=MessageKind(m["kind"]),
        state=MessageState(m["state"]),
        failure_reason=m["failure_reason"],
        failure_detail=m["failure_detail"],
        provider_message_id=m["provider_message_id"],
        attempts=m["attempts"],
        idempotency_key=m["idempotency_key"],
        request_hash=m["request_hash"],
        content=json.loads(m["content"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        sent_at=m["sent_at"],
        stuck_at=m["stuck_at"],
        history=history.parse(m["history"]),
        version=m["version"],
        trace_id=m["trace_id"],
        span_id=m["span_id"],
        queue_id=m.get("queue_id"),
    )


def _message_values(msg: MessageRecord) -> dict[str, Any]:
    return {
        "id": msg.id,
        "instance_id": msg.instance_id,
        "idempotency_key": msg.idempotency_key,
        "request_hash": msg.request_hash,
        "recipient": msg.to,
        "kind": msg.kind.value,
        "content": _content_json(msg.content),
        "state": msg.state.value,
        "failure_reason": msg.failure_reason,
        "failure_detail": msg.failure_detail,
        "provider_message_id": msg.provider_message_id,
        "attempts": msg.attempts,
        "history": history.history_json(msg.history),
        "created_at": msg.created_at,
        "updated_at": msg.updated_at,
        "sent_at": msg.sent_at,
        "stuck_at": msg.stuck_at,
        "trace_id": msg.trace_id,
        "span_id": msg.span_id,
        "version": msg.version,
        "queue_id": msg.queue_id,
    }


def _content_json(content: dict[str, Any]) -> str:
    """The stored content: orjson (a tenth of the stdlib's cost per send); what it refuses or
    spells differently from the stdlib (a float: 1e-05 as 0.00001) takes the stdlib. Either
    text reads back as the same values."""
    try:
        return orjson.dumps(content).decode()
    except orjson.JSONEncodeError:
        return json.dumps(content, separators=(",", ":"), ensure_ascii=False)


def _message_log_rows(before: MessageRecord | None, after: MessageRecord) -> list[dict[str, Any]]:
    """Change-log rows for the history entries `after` gained over `before` (all of them for a
    new message): the log and the row's history say the same thing."""
    start = len(before.history) if before is not None else 0
    return [
        changelog.change_row(entry)
        for change in after.history[start:]
        for entry in change_log.message_changes(after, change)
    ]


_MESSAGE_COLUMNS = tuple(name for name, _ in pg_fast.MESSAGE_COLUMNS)


def _instance(row: Row[Any] | Any) -> InstanceRecord:
    m = row._mapping
    return InstanceRecord(
        instance_id=m["id"],
        name=m["name"],
        plan=Plan(m["plan"]),
        state=InstanceState(m["state"]),
        reason=m["reason"],
        phone_number=m["phone_number"],
        checked_at=m["checked_at"],
        last_event_at=m["last_event_at"],
        state_changed_at=m["state_changed_at"],
        version=m["version"],
        consecutive_gateway_failures=m["consecutive_gateway_failures"],
        webhooks_state=m["webhooks_state"],
        webhooks_detail=m["webhooks_detail"],
        last_receipt_at=m["last_receipt_at"],
        provider=m.get("provider") or "WAPI",
    )


_INSTANCE_COLUMNS = [c for c in instances.c if c.name not in ("token", "stall_ended_at", "client_token")]

# An event about a message this service sent: the same provider id on the same instance.
_EVENT_OF_OUR_SEND = and_(
    messages.c.provider_message_id == events.c.provider_message_id,
    messages.c.instance_id == events.c.instance_id,
)

# The compare-and-set update of an instance transition (Repository._apply_instance_triggers).
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


@dataclass(frozen=True, slots=True)
class _InstanceSignal:
    """One instance trigger to run, with what comes with it."""

    instance_id: str
    trigger: InstanceTrigger
    source: str
    new_phone: str | None = None
    checked_at: datetime | None = None
    event_at: datetime | None = None


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


def encode_page_token(created_at: datetime, message_id: str) -> str:
    raw = f"{created_at.isoformat()}|{message_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, str]:
    """Raises ValueError on anything that is not a token we issued."""
    raw = base64.urlsafe_b64decode(token.encode()).decode()
    at, _, message_id = raw.partition("|")
    if not message_id:
        raise ValueError("bad page token")
    parsed = datetime.fromisoformat(at)
    if parsed.tzinfo is None or len(message_id) > 64 or not (message_id.isascii() and message_id.isprintable()):
        raise ValueError("bad page token")
    return parsed, message_id


class Repository:
    # The store's own exceptions, as the ports name them (statemachine.ports.Store).
    transient_errors: tuple[type[Exception], ...] = (DBAPIError,)
    unavailable_errors: tuple[type[Exception], ...] = (DBAPIError, SQLAlchemyError)

    def __init__(self, engine: AsyncEngine, *, group_commit_window: float = 0.0) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        # Single statements need no BEGIN/COMMIT round-trips: reads and one-statement writes
        # (each atomic on its own) run in autocommit; multi-statement units use transaction().
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Postgres: the group-commit lanes write through raw asyncpg (see pg_fast), one leased
        # connection each.
        self._pg = self._dialect == "postgresql"
        self._insert_lease = pg_fast.Lease(engine)
        self._status_lease = pg_fast.Lease(engine)
        self._pruner = Pruner(engine)
        self._sent_lease = pg_fast.Lease(engine)
        # Hot statements are built once; each call only binds parameters (no per-call statement
        # construction or cache-key generation over literal values).
        self._insert_message = self._insert(messages).on_conflict_do_nothing(
            index_elements=["instance_id", "idempotency_key"]
        )
        self._insert_message_returning = self._insert_message.returning(messages.c.id)
        self._batcher: _Batcher[_NewMessage, bool] = _Batcher(
            self._insert_messages_batch, self._insert_message_alone, window=group_commit_window
        )
        self._status_batcher: _Batcher[_StatusItem, IngestResult] = _Batcher(
            self._ingest_statuses, self._ingest_status_alone, window=group_commit_window
        )
        self._sent_batcher: _Batcher[dict[str, Any], tuple[bool, bool]] = _Batcher(
            self._mark_sent_batch, self._mark_sent_alone, window=group_commit_window
        )
        self._insert_event = self._insert(events).on_conflict_do_nothing(index_elements=["dedupe_key"])
        self._insert_event_returning = self._insert_event.returning(events.c.id)
        self._set_event_reason = (
            update(events).where(events.c.id == bindparam("b_event_id")).values(reason=bindparam("reason"))
        )
        self._update_message = (
            update(messages)
            .where(messages.c.id == bindparam("b_id"), messages.c.version == bindparam("b_version"))
            .values(
                {
                    c.name: history.append(messages.c.history, "entries") if c.name == "history" else bindparam(c.name)
                    for c in messages.c
                    if c.name != "id"
                }
            )
        )
        self._mark_sent = (
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
        self._parked_exists = (
            select(events.c.id)
            .where(
                events.c.provider_message_id == bindparam("pid"),
                events.c.instance_id == bindparam("iid"),
                events.c.parked,
            )
            .limit(1)
        )
        self._message_by_provider_id = (
            select(messages, instances.c.reason.label("instance_reason"))
            .join(instances, instances.c.id == messages.c.instance_id)
            .where(
                messages.c.provider_message_id == bindparam("pid"),
                messages.c.instance_id == bindparam("iid"),
            )
            .with_for_update(of=messages)
        )

    async def aclose(self) -> None:
        """Hands leased connections back to the pool (before the engine is disposed)."""
        await self._insert_lease.aclose()
        await self._status_lease.aclose()
        await self._sent_lease.aclose()

    def _insert(self, table: Any) -> Any:
        module = postgresql if self._dialect == "postgresql" else sqlite
        return module.insert(table)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))

    # --- instances ---------------------------------------------------------------------------

    async def upsert_instance(
        self, instance_id: str, name: str, token: str | None, plan: Plan
    ) -> tuple[InstanceRecord, bool]:
        """Creates the instance (state UNKNOWN) or updates name/plan/token. Returns (row, created)."""
        now = utcnow()
        async with self.transaction() as conn:
            row = (
                await conn.execute(select(*_INSTANCE_COLUMNS).where(instances.c.id == instance_id).with_for_update())
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
                        await conn.execute(select(*_INSTANCE_COLUMNS).where(instances.c.id == instance_id))
                    ).one()
                    return _instance(created_row), True
                row = (await conn.execute(select(*_INSTANCE_COLUMNS).where(instances.c.id == instance_id))).one()
            changes: dict[str, Any] = {"plan": plan.value, "updated_at": now, "version": row.version + 1}
            if name:
                changes["name"] = name
            if token:
                changes["token"] = token
            await conn.execute(update(instances).where(instances.c.id == instance_id).values(**changes))
            updated = (await conn.execute(select(*_INSTANCE_COLUMNS).where(instances.c.id == instance_id))).one()
            return _instance(updated), False

    async def get_instance(self, instance_id: str) -> tuple[InstanceRecord, str] | None:
        """The instance and its token (for the provider call only: never returned to callers)."""
        async with self._auto.connect() as conn:
            row = (
                await conn.execute(select(*_INSTANCE_COLUMNS, instances.c.token).where(instances.c.id == instance_id))
            ).first()
        return (_instance(row), row.token) if row else None

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
            select(*_INSTANCE_COLUMNS, func.coalesce(instance_stuck_counts.c.stuck, 0).label("stuck"))
            .outerjoin(instance_stuck_counts, instance_stuck_counts.c.instance_id == instances.c.id)
            .order_by(instances.c.id)
        )
        if wanted:
            query = query.where(instances.c.state.in_(wanted))
        async with self.engine.connect() as conn:
            return [replace(_instance(r), stuck_messages=r.stuck) for r in await conn.execute(query)]

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
                return await self._apply_instance_trigger(
                    own, instance_id, trigger, source, new_phone, checked_at, event_at
                )
        return await self._apply_instance_trigger(conn, instance_id, trigger, source, new_phone, checked_at, event_at)

    async def _apply_instance_trigger(
        self,
        conn: AsyncConnection,
        instance_id: str,
        trigger: InstanceTrigger,
        source: str,
        new_phone: str | None,
        checked_at: datetime | None,
        event_at: datetime | None,
    ) -> InstanceChange | None:
        changes = await self._apply_instance_triggers(
            conn, [_InstanceSignal(instance_id, trigger, source, new_phone, checked_at, event_at)]
        )
        return changes[0] if changes else None

    async def _apply_instance_triggers(
        self, conn: AsyncConnection, signals: Sequence[_InstanceSignal]
    ) -> list[InstanceChange]:
        """The one writer of instance transitions: each signal runs through the instance machine on
        its locked row (rows locked in id order) and is stored with compare-and-set, with its
        transition row and change-log entry. One statement per kind of write for the whole list.
        Instances that do not exist are left out of the result."""
        by_id = {s.instance_id: s for s in signals}
        rows = (
            await conn.execute(
                select(*_INSTANCE_COLUMNS, instances.c.stall_ended_at)
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
            signal = by_id[row.id]
            record = _instance(row)
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
                transitions.append(
                    {
                        "instance_id": record.instance_id,
                        "from_state": decision.from_state.value,
                        "to_state": decision.to_state.value,
                        "reason": decision.reason,
                        "source": signal.source,
                        "at": now,
                    }
                )
                log.append(
                    change_log.instance_health_changed(
                        record.instance_id,
                        decision.from_state,
                        decision.from_reason,
                        decision.to_state,
                        decision.reason,
                        decision.phone,
                        signal.source,
                        now,
                    )
                )
            params.append(
                {
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
            )
            out.append(InstanceChange(updated, decision, signal.source, now))
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

    # --- operator recovery -------------------------------------------------------------------

    async def record_recovery_action(self, action: RecoveryAction) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                recovery_actions.insert().values(
                    instance_id=action.instance_id,
                    action=action.action[:32],
                    requested_by=action.requested_by[:96],
                    at=action.at,
                    outcome=action.outcome[:64],
                    detail=action.detail[:1000],
                )
            )

    @staticmethod
    def _operator_actions(instance_id: str, since: datetime) -> Any:
        """The actions the per-instance limit counts: an operator's that reach W-API (not a stall
        clear, not the service's own webhook set-ups); index on instance_id, at: bounded by the window."""
        return and_(
            recovery_actions.c.instance_id == instance_id,
            recovery_actions.c.at >= since,
            recovery_actions.c.action != "clear_stall",
            recovery_actions.c.requested_by.not_in(AUTOMATIC_REQUESTERS),
        )

    async def count_recovery_actions(self, instance_id: str, since: datetime) -> int:
        query = select(func.count()).where(self._operator_actions(instance_id, since))
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def reserve_recovery_action(
        self, action: RecoveryAction, *, since: datetime, limit: int, window: float
    ) -> RecoveryReservation | None:
        """Counts and inserts the action's audit row (outcome PENDING) in one transaction that first
        locks the instance's row, so replicas asked at once queue behind each other and never let
        more than `limit` through: PostgreSQL by `SELECT … FOR UPDATE`, SQLite by its
        `BEGIN IMMEDIATE` write lock (FOR UPDATE is dropped there). None: no such instance."""
        async with self.transaction() as conn:
            locked = await conn.execute(
                select(instances.c.id).where(instances.c.id == action.instance_id).with_for_update()
            )
            if locked.first() is None:
                return None
            newest = (
                (
                    await conn.execute(
                        select(recovery_actions.c.at)
                        .where(self._operator_actions(action.instance_id, since))
                        .order_by(recovery_actions.c.at.desc())
                        .limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if len(newest) >= limit:
                # Free again when the oldest of the `limit` newest leaves the window.
                wait = (newest[-1] + timedelta(seconds=window) - action.at).total_seconds()
                return RecoveryReservation(None, max(0.0, wait))
            inserted = await conn.execute(
                recovery_actions.insert()
                .values(
                    instance_id=action.instance_id,
                    action=action.action[:32],
                    requested_by=action.requested_by[:96],
                    at=action.at,
                    outcome=action.outcome[:64],
                    detail=action.detail[:1000],
                )
                .returning(recovery_actions.c.id)
            )
            return RecoveryReservation(int(inserted.scalar_one()))

    async def finish_recovery_action(self, action_id: int, outcome: str, detail: str) -> None:
        async with self.transaction() as conn:
            await conn.execute(
                update(recovery_actions)
                .where(recovery_actions.c.id == action_id)
                .values(outcome=outcome[:64], detail=detail[:1000])
            )

    async def list_recovery_actions(self, instance_id: str, limit: int = 50) -> list[RecoveryAction]:
        query = (
            select(recovery_actions)
            .where(recovery_actions.c.instance_id == instance_id)
            .order_by(recovery_actions.c.at.desc(), recovery_actions.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [
                RecoveryAction(r.instance_id, r.action, r.requested_by, r.at, r.outcome, r.detail)
                for r in await conn.execute(query)
            ]

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

    # --- messages ----------------------------------------------------------------------------

    async def insert_message(self, msg: MessageRecord) -> tuple[MessageRecord, bool]:
        """Inserts unless (instance_id, idempotency_key) exists; then returns the stored one.

        Concurrent inserts are group-committed: one multi-row INSERT … ON CONFLICT DO NOTHING
        RETURNING per batch instead of one round-trip each (see _InsertBatcher).
        """
        if await self._batcher.submit((_message_values(msg), _message_log_rows(None, msg))):
            return msg, True
        async with self._auto.connect() as conn:
            row = (
                await conn.execute(
                    select(messages).where(
                        messages.c.instance_id == msg.instance_id,
                        messages.c.idempotency_key == msg.idempotency_key,
                    )
                )
            ).one()
            return _message(row), False

    async def _insert_messages_batch(self, items: list[_NewMessage]) -> list[bool]:
        """For each row, whether it was inserted (a row whose key exists is skipped, not an error);
        the change-log rows of the inserted ones go in with them."""
        rows = [row for row, _ in items]
        log_rows = [entry for _, entries in items for entry in entries]
        if self._pg:
            columns = [[row[name] for row in rows] for name in _MESSAGE_COLUMNS]
            async with self._insert_lease.driver(pg_fast.INSERT_MESSAGES) as driver:
                inserted = {
                    r[0] for r in await driver.fetch(pg_fast.INSERT_MESSAGES, *columns, *changelog.as_columns(log_rows))
                }
            return [row["id"] in inserted for row in rows]
        async with self.transaction() as conn:
            inserted = {r.id for r in await conn.execute(self._insert_message_returning, rows)}
            await changelog.append_rows(conn, [entry for entry in log_rows if entry["message_id"] in inserted])
        return [row["id"] in inserted for row in rows]

    async def _insert_message_alone(self, item: _NewMessage) -> bool:
        return (await self._insert_messages_batch([item]))[0]

    async def _ingest_status_alone(self, item: _StatusItem) -> IngestResult:
        return await self._ingest_status_locked(item)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        async with self._auto.connect() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
        return _message(row) if row else None

    async def _locked_message(self, conn: AsyncConnection, message_id: str) -> MessageRecord | None:
        row = (await conn.execute(select(messages).where(messages.c.id == message_id).with_for_update())).first()
        return _message(row) if row else None

    async def _save_message(self, conn: AsyncConnection, before: MessageRecord, after: MessageRecord) -> None:
        result = await conn.execute(self._update_message, self._update_params(before, after))
        if result.rowcount != 1:
            raise ConcurrentUpdateError(before.id)
        after.version = before.version + 1
        await changelog.append_rows(conn, _message_log_rows(before, after))

    async def record_sent(self, msg: MessageRecord, provider_message_id: str, *, source: str) -> MessageRecord | None:
        """PENDING → SENT in one conditional UPDATE, from the row this process just inserted.

        None when the row moved meanwhile (a reconciler, another replica): then the caller takes
        the locked path. A status that beat this commit is applied right after (parked events).
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
            return await self.get_message(msg.id)
        return after

    async def _mark_sent_alone(self, params: dict[str, Any]) -> tuple[bool, bool]:
        """(updated, a parked status waits for it). The parked check runs after the UPDATE has
        committed: the ingest side checks after its own commit, so one of the two sees the other."""
        async with self.transaction() as conn:
            if not await self._write_sent(conn, params):
                return False, False
        async with self._auto.connect() as conn:
            parked = await conn.execute(
                self._parked_exists, {"pid": params["provider_message_id"], "iid": params["iid"]}
            )
            return True, parked.first() is not None

    async def _write_sent(self, conn: AsyncConnection, params: dict[str, Any]) -> bool:
        """PENDING → SENT as the message machine decided it (send_outcome), compare-and-set on
        version and state: the SQLAlchemy spelling of the one SENT write, for record_sent on SQLite
        and for record_send_outcome on both; pg_fast.MARK_SENT is the same write over arrays."""
        if (await conn.execute(self._mark_sent, params)).rowcount != 1:
            return False
        await changelog.append_rows(conn, params["log"])
        return True

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
                updated.append((await conn.execute(self._mark_sent, item)).rowcount == 1)
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

    async def apply_parked(self, provider_message_id: str | None = None) -> int:
        """Applies parked statuses whose message now exists (all of them when no id is given).

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
            .where(messages.c.state != _PENDING)
            .distinct()
            .limit(200)
        )
        async with self._auto.connect() as conn:
            ids = [r.id for r in await conn.execute(query)]
        applied = 0
        for message_id in ids:
            async with self.transaction() as conn:
                msg = await self._locked_message(conn, message_id)
                if msg is None:
                    continue
                applied += len(await self._apply_parked(conn, msg))
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
            msg = await self._locked_message(conn, message_id)
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
                await self._save_message(conn, msg, after)  # FAILED or QUEUED
            elif not await self._write_sent(conn, _sent_params(msg, after)):
                raise ConcurrentUpdateError(msg.id)  # the row is locked: cannot happen
            if after.state is MessageState.SENT or after.provider_message_id:  # also QUEUED with an id
                late = await self._apply_parked(conn, after)
                if late:
                    changes += late
                    after = await self._locked_message(conn, message_id) or after
            return after, changes

    async def _apply_parked(self, conn: AsyncConnection, msg: MessageRecord) -> list[MessageChange]:
        """Parked statuses of `msg` (as stored), through the status plan in rank order, written as
        one compare-and-set update; a delivery among them lifts a stall like any other."""
        rows = (
            await conn.execute(
                select(events.c.id, events.c.status, events.c.received_at).where(
                    events.c.provider_message_id == msg.provider_message_id,
                    events.c.instance_id == msg.instance_id,  # another instance's status never applies
                    events.c.parked,
                )
            )
        ).all()
        if not rows or msg.provider_message_id is None:
            return []
        reason = (await conn.execute(select(instances.c.reason).where(instances.c.id == msg.instance_id))).scalar()
        facts = _status_facts(msg, str(reason or ""))
        steps = plan_chain(
            facts,
            [
                StatusEvent(msg.instance_id, msg.provider_message_id, MessageState(r.status), r.received_at)
                for r in rows
            ],
            now=utcnow(),
        )
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
            await self._lift_stall(conn, msg.instance_id, [])
        return out

    async def reset_for_retry(
        self, message_id: str, *, source: str, trace_ids: tuple[str, str] = ("", "")
    ) -> MessageRecord:
        """FAILED → PENDING, attempts + 1. Raises LookupError / ValueError (not retryable)."""
        async with self.transaction() as conn:
            msg = await self._locked_message(conn, message_id)
            if msg is None:
                raise LookupError(message_id)
            after = transition_message(
                msg,
                MessageTrigger.RETRY,
                reason=Reason.RETRY_REQUESTED,
                source=source,
                at=utcnow(),
                trace_ids=trace_ids,
            )
            if after is None:
                raise ValueError(msg.state.value)
            await self._save_message(conn, msg, after)
            return after

    async def list_messages(
        self,
        *,
        instance_id: str = "",
        states: Sequence[MessageState] = (),
        stuck_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[MessageRecord], str]:
        if stuck_only:
            if states and not {MessageState.SENT, MessageState.QUEUED} & set(states):
                return [], ""  # every stuck message is SENT or QUEUED
            query = self._stuck_page(instance_id, page_size, page_token)
        else:
            query = select(messages)
            if instance_id:
                query = query.where(messages.c.instance_id == instance_id)
            if states:
                query = query.where(messages.c.state.in_([s.value for s in states]))
            if page_token:
                at, last_id = decode_page_token(page_token)
                query = query.where(
                    or_(messages.c.created_at < at, and_(messages.c.created_at == at, messages.c.id < last_id))
                )
            query = query.order_by(messages.c.created_at.desc(), messages.c.id.desc()).limit(page_size + 1)
        async with self.engine.connect() as conn:
            rows = [_message(r) for r in await conn.execute(query)]
        next_token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            next_token = encode_page_token(rows[-1].created_at, rows[-1].id)
        return rows, next_token

    @staticmethod
    def _stuck_page(instance_id: str, page_size: int, page_token: str) -> Any:
        """A page of stuck messages: the page is cut from the open-work index first, then its
        messages are fetched by id (never a join that starts from the history)."""
        page = select(open_messages.c.message_id, open_messages.c.created_at).where(_STUCK)
        if instance_id:
            page = page.where(open_messages.c.instance_id == instance_id)
        if page_token:
            at, last_id = decode_page_token(page_token)
            page = page.where(
                or_(
                    open_messages.c.created_at < at,
                    and_(open_messages.c.created_at == at, open_messages.c.message_id < last_id),
                )
            )
        cut = (
            page.order_by(open_messages.c.created_at.desc(), open_messages.c.message_id.desc())
            .limit(page_size + 1)
            .cte("page")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        return (
            select(messages)
            .join(cut, cut.c.message_id == messages.c.id)
            .order_by(cut.c.created_at.desc(), cut.c.message_id.desc())
        )

    # --- webhook events ----------------------------------------------------------------------

    async def ingest(
        self, event: ProviderEvent, payload: bytes, headers: dict[str, str], received_at: datetime
    ) -> IngestResult:
        """Applies one provider event and stores it raw, in one transaction.

        The event row is inserted last, with its final reason; when its dedupe key already
        exists the whole transaction rolls back and the event is reported as a duplicate. On
        Postgres a concurrent twin waits on the row lock / unique index, so it is applied once.
        """
        if _is_status(event):
            return await self._status_batcher.submit((event, payload, headers, received_at))
        return await self._ingest_one(event, payload, headers, received_at)

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
                        await self._lift_stall(conn, step.after.instance_id, result.instance_changes)
                await self._event_extras(conn, event, result.event_id, payload, received_at)
        except _Duplicate:
            return await self._count_duplicate(event, result.event_id)
        return result

    async def _lift_stall(self, conn: AsyncConnection, instance_id: str, changes: list[InstanceChange]) -> None:
        """The one place a delivery lifts a stall (the rule: message_machine.lifts_stall)."""
        resumed = await self._apply_instance_trigger(
            conn, instance_id, InstanceTrigger.REPORT_DELIVERY_RESUMED, "webhook", None, None, None
        )
        if resumed is not None and resumed.decision.changed:
            changes.append(resumed)

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

    @staticmethod
    def _update_params(before: MessageRecord, after: MessageRecord) -> dict[str, Any]:
        """Parameters of the compare-and-set UPDATE: `after`'s values, guarded by `before`'s version."""
        values = _message_values(after)
        del values["history"]
        values["entries"] = history.entries_json(after.history[len(before.history) :])
        values["version"] = before.version + 1
        values["b_id"] = values.pop("id")
        values["b_version"] = before.version
        return values

    async def _route(
        self, conn: AsyncConnection, event: ProviderEvent, received_at: datetime, result: IngestResult
    ) -> None:
        """Applies a connection event to its instance (statuses go through the status plan)."""
        if event.instance_id is None:
            return
        if event.route in (Route.CONNECTION, Route.DISCONNECTION):
            trigger = connection_event_trigger(event.connected, event.failure_reason)
            instance_change = await self._apply_instance_trigger(
                conn, event.instance_id, trigger, "webhook", event.phone, None, received_at
            )
            if instance_change is None:
                result.reason = EventReason.UNKNOWN_INSTANCE
            else:
                changed = instance_change.decision.changed
                result.reason = EventReason.APPLIED if changed else EventReason.RECORDED
                if changed:
                    result.instance_changes.append(instance_change)

    # --- delivery history (stall detection) -------------------------------------------------

    async def recent_sends(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[SendSample]:
        """Messages of one instance created after `after`, oldest first (or the newest `limit`).

        Bounded by `limit` and read through ix_messages_instance_id_created_at: the cost follows
        the window, never the instance's history.
        """
        query = (
            select(messages.c.id, messages.c.recipient, messages.c.state, messages.c.created_at, messages.c.sent_at)
            .where(messages.c.instance_id == instance_id, messages.c.created_at > after)
            .order_by(messages.c.created_at.desc() if newest else messages.c.created_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = [
                SendSample(r.id, r.recipient, MessageState(r.state), r.created_at, r.sent_at)
                for r in await conn.execute(query)
            ]
        return rows[::-1] if newest else rows

    async def recent_receipts(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[ReceiptSample]:
        """Delivery/read webhooks of one instance received after `after`, with the message each
        confirms (oldest first, or the newest `limit`). Read through ix_events_instance_id_received_at
        and ix_messages_provider_message_id."""
        confirming = [MessageState.DELIVERED.value, MessageState.READ.value, MessageState.PLAYED.value]
        query = (
            select(events.c.received_at, messages.c.id, messages.c.recipient, messages.c.sent_at)
            .join(messages, _EVENT_OF_OUR_SEND)
            .where(
                events.c.instance_id == instance_id,
                events.c.received_at > after,
                events.c.route == Route.MESSAGE_STATUS.value,
                events.c.status.in_(confirming),
            )
            .order_by(events.c.received_at.desc() if newest else events.c.received_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = [
                ReceiptSample(r.id, r.recipient, r.sent_at, r.received_at)
                for r in await conn.execute(query)
                if r.sent_at is not None
            ]
        return rows[::-1] if newest else rows

    async def recent_acks(
        self, instance_id: str, after: datetime, *, limit: int = 1000, newest: bool = False
    ) -> list[AckSample]:
        """Server acks of one instance's sends received after `after`: "sent" statuses and
        webhookDelivery bodies of messages we sent (a phone-typed message matches none of ours),
        oldest first (or the newest `limit`). Same indexes as `recent_receipts`."""
        sent = MessageState.SENT.value
        query = (
            select(events.c.received_at, messages.c.id, messages.c.sent_at)
            .join(messages, _EVENT_OF_OUR_SEND)
            .where(
                events.c.instance_id == instance_id,
                events.c.received_at > after,
                or_(
                    and_(
                        events.c.route.in_([Route.MESSAGE_STATUS.value, Route.CHAT_STATUS.value]),
                        events.c.status == sent,
                    ),
                    events.c.route == Route.DELIVERY.value,
                ),
            )
            .order_by(events.c.received_at.desc() if newest else events.c.received_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = [
                AckSample(r.id, r.sent_at, r.received_at) for r in await conn.execute(query) if r.sent_at is not None
            ]
        return rows[::-1] if newest else rows

    async def sending_instances(self, since: datetime, *, limit: int = 1000) -> list[str]:
        """Instances with a message created after `since` (ix_messages_created_at_id: the window only)."""
        query = (
            select(messages.c.instance_id)
            .where(messages.c.created_at > since)
            .group_by(messages.c.instance_id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r[0] for r in await conn.execute(query)]

    # --- change log --------------------------------------------------------------------------

    async def read_changes(
        self,
        after: ChangeCursor | None,
        *,
        limit: int,
        instance_ids: Sequence[str] | None = None,
        kinds: Sequence[ChangeKind] | None = None,
    ) -> ChangePage:
        """Changes after `after` in commit-safe order (see changelog.py), with the cursor to resume from."""
        async with self._auto.connect() as conn:
            return await changelog.read(conn, after, limit=limit, instance_ids=instance_ids, kinds=kinds)

    async def head_change_cursor(self) -> ChangeCursor:
        async with self._auto.connect() as conn:
            return await changelog.head(conn)

    async def oldest_change_cursor(self) -> ChangeCursor:
        async with self._auto.connect() as conn:
            return await changelog.oldest(conn)

    async def change_log_identity(self) -> tuple[str, str]:
        async with self.transaction() as conn:
            return await changelog.identity(conn)

    # --- stuck messages ----------------------------------------------------------------------

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
            .where(_UNSTUCK, open_messages.c.sent_at < cutoff)
            .order_by(open_messages.c.sent_at)
            .limit(limit)
        )
        candidates = (
            select(messages.c.id)
            .where(
                messages.c.id.in_(due.scalar_subquery()),
                messages.c.state.in_(_HANDED_OVER),
                messages.c.stuck_at.is_(None),
            )
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(messages)
            .where(
                messages.c.id.in_(candidates.scalar_subquery()),
                messages.c.state.in_(_HANDED_OVER),
                messages.c.stuck_at.is_(None),
            )
            .values(stuck_at=now)
            .returning(*messages.c)
        )
        async with self.transaction() as conn:
            stuck = [_message(r) for r in await conn.execute(stmt)]
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
                            .where(open_messages.c.state == _PENDING, open_messages.c.since < cutoff)
                            .order_by(open_messages.c.since)
                            .limit(limit)
                            .scalar_subquery()
                        ),
                        messages.c.state == _PENDING,
                        messages.c.updated_at < cutoff,
                    )
                    .order_by(messages.c.updated_at)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            now = utcnow()
            for row in rows:
                msg = _message(row)
                after = outcome_unknown(msg, at=now)
                if after is not None:
                    await self._save_message(conn, msg, after)
                    out.append(after)
        return out

    async def prune(self, policy: RetentionPolicy) -> PruneReport:
        """One retention run (see retention.py); skipped while another replica prunes."""
        return await self._pruner.run_once(policy)

    async def stall_if_stuck_run(self, instance_id: str, threshold: int) -> InstanceChange | None:
        """Stalls a CONNECTED instance whose last `threshold` sends are all stuck (stall_stuck_runs of one)."""
        changes = await self.stall_stuck_runs([instance_id], threshold)
        return changes[0] if changes else None

    async def stall_stuck_runs(self, instance_ids: Sequence[str], threshold: int) -> list[InstanceChange]:
        """Stalls every CONNECTED instance of these whose last `threshold` sends are all stuck:
        one read for all of them and one transaction for their transitions.

        The run is derived from the data, never counted on the hot path (the rule:
        statemachine/stuck.py `stalls`): per instance its `threshold` newest stuck messages sent
        after its latest stall ended (open-work index; `instances.stall_ended_at`: after an
        operator's clear or a reconnection the messages stuck during the stall must not stall it
        again at once), and its latest delivery status after the oldest of them (one ordered look
        at its events). Read in proportion to the open work of these instances.
        """
        if not instance_ids:
            return []
        om = open_messages.c
        since_stall = or_(instances.c.stall_ended_at.is_(None), om.sent_at > instances.c.stall_ended_at)
        ranked = (
            select(
                om.instance_id,
                om.sent_at,
                func.row_number().over(partition_by=om.instance_id, order_by=om.sent_at.desc()).label("rank"),
            )
            .select_from(open_messages.join(instances, instances.c.id == om.instance_id))
            .where(_STUCK, om.instance_id.in_(sorted(set(instance_ids))), since_stall)
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
                events.c.status.in_(_DELIVERY_STATUSES),
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
        async with self.transaction() as conn:
            runs: dict[str, tuple[list[datetime], datetime | None]] = {}
            for r in await conn.execute(query):
                sent, _ = runs.setdefault(r.instance_id, ([], _aware(r.last_delivery)))
                sent.append(r.sent_at)
            due = [i for i, (sent, delivered) in runs.items() if stuck_rule.stalls(sent, delivered, threshold)]
            if not due:
                return []
            # The sweep's one call site of the stall.
            changes = await self._apply_instance_triggers(
                conn, [_InstanceSignal(i, InstanceTrigger.REPORT_DELIVERY_STALLED, "sweeper") for i in due]
            )
            return [c for c in changes if c.decision.changed]


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
    )


class _Duplicate(Exception):
    pass


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
        "log": _message_log_rows(msg, after),
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


def _names_status(event: ProviderEvent) -> bool:
    """An event the status plan applies: it names its instance, its message and a status."""
    return event.status is not None and event.instance_id is not None and event.provider_message_id is not None


def _aware(value: Any) -> datetime | None:
    """A timestamp from a scalar subquery (SQLite returns its text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


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


_StatusItem = tuple[ProviderEvent, bytes, dict[str, str], datetime]
# A message row and its change-log rows.
_NewMessage = tuple[dict[str, Any], list[dict[str, Any]]]
T = TypeVar("T")
R = TypeVar("R")


class _Batcher(Generic[T, R]):
    """Group commit: items submitted while a batch is being written go out together in the next.

    Alone, an item costs exactly one statement (no timer, no added latency). Under load (items
    arrived while a batch was in flight) the next batch waits `window` seconds to gather more:
    on a CPU-bound server the database answers faster than requests arrive, so without the
    window batches stay at ~2 items and each item pays a round-trip's CPU (benchmark:
    a 5 ms window cut the blocked send's server CPU ~10% and Postgres' CPU by half).
    When a batch fails for one item's sake (bad data, constraint) or a lock conflict, its items
    are retried one by one so they cannot fail each other; when the database itself fails,
    every item gets that error.
    """

    MAX_BATCH = 200

    def __init__(
        self,
        write_batch: Callable[[list[T]], Awaitable[list[R]]],
        write_one: Callable[[T], Awaitable[R]],
        *,
        window: float = 0.0,
    ) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._window = window
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._draining = False

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._draining:
            self._draining = True
            task = asyncio.create_task(self._drain())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await future

    async def _fill(self) -> None:
        """Under load: wait while the batch keeps growing, at most `window` seconds. Stops as soon
        as a step brings nothing new (every caller may be waiting on this very batch)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._window
        step = self._window / 5
        while len(self._pending) < self.MAX_BATCH and loop.time() < deadline:
            before = len(self._pending)
            await asyncio.sleep(step)
            if len(self._pending) == before:
                return

    async def _drain(self) -> None:
        try:
            first = True
            while self._pending:
                if not first and self._window > 0:
                    await self._fill()
                first = False
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                try:
                    results = await self._write_batch([item for item, _ in batch])
                    for (_, future), value in zip(batch, results, strict=True):
                        _settle(future, value)
                except DBAPIError as error:
                    if not _row_specific(error) or len(batch) == 1:
                        for _item, future in batch:
                            _fail(future, error)
                        continue
                    for item, future in batch:
                        try:
                            _settle(future, await self._write_one(item))
                        except Exception as item_error:
                            _fail(future, item_error)
                except Exception as error:
                    for _item, future in batch:
                        _fail(future, error)
        finally:
            self._draining = False


def _row_specific(error: DBAPIError) -> bool:
    """SQLSTATE 22 (data exception), 23 (integrity) or 40 (deadlock/serialization): retrying the
    items one by one can succeed; anything else means the database itself is in trouble."""
    if isinstance(error, (DataError, IntegrityError)):
        return True
    sqlstate = str(getattr(error.orig, "sqlstate", "") or getattr(error.orig, "pgcode", "") or "")
    return sqlstate[:2] in ("22", "23", "40")


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException | None) -> None:
    if not future.done():
        future.set_exception(error or RuntimeError("insert failed"))
