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

from sqlalchemy import Row, and_, bindparam, func, literal_column, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnClause

from adapters.persistence import changelog, pg_fast
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
from statemachine import changes as change_log
from statemachine.changes import ChangeCursor, ChangeKind, ChangePage
from statemachine.domain import (
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
from statemachine.instance_machine import InstanceTrigger, decide_instance
from statemachine.message_machine import (
    DELIVERED_OR_LATER,
    MESSAGE_RANK,
    STATUS_FAILED_DETAIL,
    MessageTrigger,
    apply_status,
    lifts_stall,
    outcome_unknown,
    send_outcome,
    status_change,
    stuck_run_stalls,
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
    RetentionPolicy,
    SendSample,
)

# States spelled as SQL literals where a partial index must apply: with a bound parameter a
# prepared statement's generic plan cannot prove the index predicate and scans instead.
_SENT: ColumnClause[str] = literal_column("'SENT'")
_PENDING: ColumnClause[str] = literal_column("'PENDING'")
_QUEUED: ColumnClause[str] = literal_column("'QUEUED'")
# Handed to W-API and not delivered: both can get stuck (a queued message may never leave the queue).
_HANDED_OVER = [_SENT, _QUEUED]
_STUCK = and_(open_messages.c.state.in_(_HANDED_OVER), open_messages.c.stuck_at.is_not(None))
_UNSTUCK = and_(open_messages.c.state.in_(_HANDED_OVER), open_messages.c.stuck_at.is_(None))
_DELIVERY_STATUSES: list[ColumnClause[str]] = [literal_column(f"'{s.value}'") for s in sorted(DELIVERED_OR_LATER)]
# How far back the sweep looks for parked statuses whose message has appeared meanwhile: a
# status is parked only while its send's SENT commit is in flight (seconds); older parked rows
# belong to messages this service never sent (e.g. typed on the phone) and stay parked.
PARKED_HORIZON = timedelta(hours=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class _StatusFacts:
    """The columns of a message a status lane reads: enough for its change-log entry."""

    id: str
    instance_id: str
    to: str
    provider_message_id: str | None
    attempts: int
    version: int
    created_at: datetime
    sent_at: datetime | None
    failure_reason: str
    failure_detail: str


# --- row mapping -----------------------------------------------------------------------------


def _change_to_json(c: StateChange) -> str:
    return json.dumps(
        {
            "from": c.from_state,
            "to": c.to_state,
            "reason": c.reason,
            "source": c.source,
            "at": c.at.isoformat(),
            "applied": c.applied,
        },
        separators=(",", ":"),
    )


def _history_to_json(history: Sequence[StateChange]) -> str:
    """The same text as json.dumps of the list: the Postgres lane appends entries in SQL."""
    return "[" + ",".join(_change_to_json(c) for c in history) + "]"


def _history_from_json(text: str) -> list[StateChange]:
    return [
        StateChange(h["from"], h["to"], h["reason"], h["source"], datetime.fromisoformat(h["at"]), h["applied"])
        for h in json.loads(text)
    ]


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
        history=_history_from_json(m["history"]),
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
        "content": json.dumps(msg.content, separators=(",", ":"), ensure_ascii=False),
        "state": msg.state.value,
        "failure_reason": msg.failure_reason,
        "failure_detail": msg.failure_detail,
        "provider_message_id": msg.provider_message_id,
        "attempts": msg.attempts,
        "history": _history_to_json(msg.history),
        "created_at": msg.created_at,
        "updated_at": msg.updated_at,
        "sent_at": msg.sent_at,
        "stuck_at": msg.stuck_at,
        "trace_id": msg.trace_id,
        "span_id": msg.span_id,
        "version": msg.version,
        "queue_id": msg.queue_id,
    }


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
    )


_INSTANCE_COLUMNS = [c for c in instances.c if c.name != "token"]


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
            .values({c.name: bindparam(c.name) for c in messages.c if c.name != "id"})
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
                history=bindparam("history"),
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
        query = select(*_INSTANCE_COLUMNS).order_by(instances.c.id)
        if states:
            query = query.where(instances.c.state.in_([s.value for s in states]))
        async with self.engine.connect() as conn:
            return [_instance(r) for r in await conn.execute(query)]

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
        row = (
            await conn.execute(select(*_INSTANCE_COLUMNS).where(instances.c.id == instance_id).with_for_update())
        ).first()
        if row is None:
            return None
        record = _instance(row)
        decision = decide_instance(record.state, record.reason, record.phone_number, trigger, new_phone=new_phone)
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, "version": record.version + 1}
        if checked_at is not None:
            values["checked_at"] = checked_at
        if event_at is not None:
            values["last_event_at"] = event_at
        if decision.applied:
            values.update(state=decision.to_state.value, reason=decision.reason, phone_number=decision.phone)
            if decision.to_state is InstanceState.CONNECTED:
                values.update(consecutive_gateway_failures=0)
        if decision.changed:
            values["state_changed_at"] = now
            if record.reason == Reason.DELIVERY_STALLED and decision.reason != Reason.DELIVERY_STALLED:
                values["stall_ended_at"] = now
        result = await conn.execute(
            update(instances)
            .where(instances.c.id == instance_id, instances.c.version == record.version)
            .values(**values)
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(instance_id)
        if decision.changed:
            await conn.execute(
                instance_transitions.insert().values(
                    instance_id=instance_id,
                    from_state=decision.from_state.value,
                    to_state=decision.to_state.value,
                    reason=decision.reason,
                    source=source,
                    at=now,
                )
            )
            await changelog.append(
                conn,
                [
                    change_log.instance_health_changed(
                        instance_id,
                        decision.from_state,
                        decision.from_reason,
                        decision.to_state,
                        decision.reason,
                        decision.phone,
                        source,
                        now,
                    )
                ],
            )
        updated = replace(
            record,
            state=decision.to_state,
            reason=decision.reason,
            phone_number=decision.phone,
            checked_at=values.get("checked_at", record.checked_at),
            last_event_at=values.get("last_event_at", record.last_event_at),
            state_changed_at=values.get("state_changed_at", record.state_changed_at),
            version=record.version + 1,
            consecutive_gateway_failures=values.get(
                "consecutive_gateway_failures", record.consecutive_gateway_failures
            ),
        )
        return InstanceChange(updated, decision, source, now)

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

    async def touch_instances(self, last_event: dict[str, datetime]) -> None:
        """Coalesced last_event_at updates (one UPDATE per instance per flush, never backwards)."""
        if not last_event:
            return
        async with self.transaction() as conn:
            for instance_id, at in sorted(last_event.items()):
                await conn.execute(
                    update(instances)
                    .where(
                        instances.c.id == instance_id,
                        or_(instances.c.last_event_at.is_(None), instances.c.last_event_at < at),
                    )
                    .values(last_event_at=at)
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

    async def count_recovery_actions(self, instance_id: str, since: datetime) -> int:
        """Actions on one instance since `since` that reached W-API (an operator's stall clear does
        not; index on instance_id, at: cost bounded by the window)."""
        query = select(func.count()).where(
            recovery_actions.c.instance_id == instance_id,
            recovery_actions.c.at >= since,
            recovery_actions.c.action != "clear_stall",
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

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
        return await self._ingest_one(*item)

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
        params = {
            "b_id": msg.id,
            "b_version": msg.version,
            "provider_message_id": after.provider_message_id,
            "sent_at": after.sent_at,
            "updated_at": after.updated_at,
            "history": _history_to_json(after.history),
            "version": after.version,
            "iid": msg.instance_id,
            "log": _message_log_rows(msg, after),
        }
        updated, parked = await (self._sent_batcher.submit(params) if self._pg else self._mark_sent_alone(params))
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
            if (await conn.execute(self._mark_sent, params)).rowcount != 1:
                return False, False
            await changelog.append_rows(conn, params["log"])
        async with self._auto.connect() as conn:
            parked = await conn.execute(
                self._parked_exists, {"pid": params["provider_message_id"], "iid": params["iid"]}
            )
            return True, parked.first() is not None

    async def _mark_sent_batch(self, items: list[dict[str, Any]]) -> list[tuple[bool, bool]]:
        """The same for a batch, on Postgres: one UPDATE over arrays, then one parked lookup."""
        columns = [
            [item[name] for item in items]
            for name in ("b_id", "b_version", "provider_message_id", "sent_at", "history")
        ]
        log_rows = [entry for item in items for entry in item["log"]]
        async with self._sent_lease.driver(pg_fast.MARK_SENT) as driver:
            updated = {r[0] for r in await driver.fetch(pg_fast.MARK_SENT, *columns, *changelog.as_columns(log_rows))}
            pids = sorted({item["provider_message_id"] for item in items if item["b_id"] in updated})
            parked = {(r[0], r[1]) for r in await driver.fetch(pg_fast.PARKED_FOR, pids)} if pids else set()
        return [(item["b_id"] in updated, (item["iid"], item["provider_message_id"]) in parked) for item in items]

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
                after, changes = await self._apply_parked(conn, msg)
                if changes:
                    await self._save_message(conn, msg, after)
                    applied += len(changes)
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
            if after.state is MessageState.SENT:
                after, late = await self._apply_parked(conn, after)
                changes += late
            await self._save_message(conn, msg, after)
            return after, changes

    async def _apply_parked(
        self, conn: AsyncConnection, msg: MessageRecord
    ) -> tuple[MessageRecord, list[MessageChange]]:
        """Parked statuses of `msg`, applied in rank order: the message after them, and the changes."""
        rows = (
            await conn.execute(
                select(events.c.id, events.c.status, events.c.received_at).where(
                    events.c.provider_message_id == msg.provider_message_id,
                    events.c.instance_id == msg.instance_id,  # another instance's status never applies
                    events.c.parked,
                )
            )
        ).all()
        if not rows:
            return msg, []
        out: list[MessageChange] = []
        for row in sorted(rows, key=lambda r: (MESSAGE_RANK.get(MessageState(r.status), 9), r.received_at)):
            msg = apply_status(msg, MessageState(row.status), source="webhook", at=row.received_at, now=utcnow())
            out.append(MessageChange(msg.id, msg.history[-1], msg.trace_id, msg.span_id, msg.sent_at))
        await conn.execute(
            update(events)
            .where(events.c.id.in_([r.id for r in rows]))
            .values(parked=False, reason=EventReason.APPLIED.value + ":LATE")
        )
        return msg, out

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
        if event.route is Route.MESSAGE_STATUS and event.status is not None and event.instance_id:
            return await self._status_batcher.submit((event, payload, headers, received_at))
        return await self._ingest_one(event, payload, headers, received_at)

    async def _ingest_one(
        self, event: ProviderEvent, payload: bytes, headers: dict[str, str], received_at: datetime
    ) -> IngestResult:
        event_id = time_ordered_id()
        result = IngestResult(event_id, event.route, event.reason, event.instance_id)
        parked = False
        try:
            async with self.transaction() as conn:
                parked = await self._route(conn, event, received_at, result)
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
                row = _event_row(event, event_id, result.reason, received_at, payload, headers)
                row["parked"] = parked
                inserted = await conn.execute(self._insert_event, row)
                if inserted.rowcount != 1:
                    raise _Duplicate
        except _Duplicate:
            return await self._count_duplicate(event, event_id)
        return result

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

    async def _ingest_statuses(self, items: list[_StatusItem]) -> list[IngestResult]:
        """Group commit of message-status events: one transaction for the whole batch.

        Same guarantees as the one-event path: messages are locked (in id order, so two batches
        cannot deadlock) before the events are inserted (in key order); an event whose key
        already exists (an earlier call, another replica, this very batch) is a duplicate and
        applies nothing; a status for a message not stored yet is parked.
        """
        if self._pg:
            return await self._ingest_statuses_pg(items)
        results = [IngestResult(time_ordered_id(), event.route, event.reason, event.instance_id) for event, *_ in items]
        duplicates: set[int] = set()
        slow: list[int] = []
        async with self.transaction() as conn:
            pids = sorted({str(event.provider_message_id) for event, *_ in items})
            rows = (
                await conn.execute(
                    select(messages, instances.c.reason.label("instance_reason"))
                    .join(instances, instances.c.id == messages.c.instance_id)
                    .where(messages.c.provider_message_id.in_(pids))
                    .order_by(messages.c.id)
                    .with_for_update(of=messages)
                )
            ).all()
            found: dict[tuple[str | None, str | None], MessageRecord] = {}
            stalled: set[tuple[str | None, str | None]] = set()
            for r in rows:
                key = (r.instance_id, r.provider_message_id)
                found[key] = _message(r)
                if r.instance_reason == Reason.DELIVERY_STALLED:
                    stalled.add(key)  # a delivery may lift the stall: the one-event path decides
            current = dict(found)
            event_rows: dict[int, dict[str, Any]] = {}
            for index, ((event, payload, headers, received_at), result) in enumerate(zip(items, results, strict=True)):
                key = (event.instance_id, event.provider_message_id)
                if key in stalled:
                    slow.append(index)
                    continue
                known = key in found
                if not known:
                    result.reason = EventReason.UNKNOWN_MESSAGE
                event_rows[index] = _event_row(event, result.event_id, result.reason, received_at, payload, headers)
                event_rows[index]["parked"] = not known
            ordered = sorted(event_rows.values(), key=lambda r: str(r["dedupe_key"]))
            inserted = {r.id for r in await conn.execute(self._insert_event_returning, ordered)} if ordered else set()
            for index, ((event, _payload, _headers, received_at), result) in enumerate(
                zip(items, results, strict=True)
            ):
                if index not in event_rows:
                    continue
                if result.event_id not in inserted:
                    duplicates.add(index)
                    continue
                key = (event.instance_id, event.provider_message_id)
                if key not in found or event.status is None:
                    continue
                after = apply_status(
                    current[key], event.status, source="webhook", at=event.moment or received_at, now=utcnow()
                )
                current[key] = after
                change = after.history[-1]
                result.message_changes.append(
                    MessageChange(after.id, change, after.trace_id, after.span_id, after.sent_at)
                )
                result.reason = EventReason.APPLIED if change.applied else EventReason.STALE_STATUS
            moved = [(found[key], current[key]) for key in found if current[key] is not found[key]]
            if moved:
                # Rows are locked (Postgres) or the writer is alone (SQLite): the version check
                # cannot fail here, so one executemany serves the whole batch.
                await conn.execute(
                    self._update_message, [self._update_params(before, after) for before, after in moved]
                )
                for before, after in moved:
                    after.version = before.version + 1
                await changelog.append_rows(
                    conn, [row for before, after in moved for row in _message_log_rows(before, after)]
                )
            # Reasons decided after the insert (applied / stale) are stored with their events.
            final = [
                {"b_event_id": results[i].event_id, "reason": str(results[i].reason)[:96]}
                for i, row in event_rows.items()
                if i not in duplicates and str(results[i].reason)[:96] != row["reason"]
            ]
            if final:
                await conn.execute(self._set_event_reason, final)
        for index in slow:
            results[index] = await self._ingest_one(*items[index])
        for index in sorted(duplicates):
            results[index] = await self._count_duplicate(items[index][0], results[index].event_id)
        return results

    async def _ingest_statuses_pg(self, items: list[_StatusItem]) -> list[IngestResult]:
        """The same batch on Postgres in two statements and no explicit transaction.

        Read the messages, decide each status in Python, then one atomic statement stores the
        events and applies the decisions only to messages whose version has not moved (see
        pg_fast.APPLY_STATUSES). A status whose message moved meanwhile is decided again on the
        fresh row; one event per message per round, so each decision sees its predecessor's
        outcome. Rare cases take the locked one-event path: an instance stalled for lack of
        deliveries (its resume is an instance transition) and anything still racing after a few
        rounds.
        """
        results = [IngestResult(time_ordered_id(), event.route, event.reason, event.instance_id) for event, *_ in items]
        todo = list(range(len(items)))
        slow: list[int] = []
        duplicates: list[int] = []
        for _ in range(5):
            if not todo:
                break
            keys: set[tuple[str | None, str | None]] = set()
            this_round: list[int] = []
            later: list[int] = []
            for index in todo:
                event = items[index][0]
                key = (event.instance_id, event.provider_message_id)
                (later if key in keys else this_round).append(index)
                keys.add(key)
            moved = await self._status_round(items, results, this_round, slow, duplicates)
            todo = moved + later
        slow.extend(todo)
        for index in slow:
            results[index] = await self._ingest_one(*items[index])
        for index in sorted(duplicates):
            results[index] = await self._count_duplicate(items[index][0], results[index].event_id)
        return results

    async def _status_round(
        self,
        items: list[_StatusItem],
        results: list[IngestResult],
        indices: list[int],
        slow: list[int],
        duplicates: list[int],
    ) -> list[int]:
        """One read + one write for these events (distinct messages); returns those to decide again."""
        pids = sorted({str(items[i][0].provider_message_id) for i in indices})
        async with self._status_lease.driver(pg_fast.READ_FOR_STATUS) as driver:
            rows = await driver.fetch(pg_fast.READ_FOR_STATUS, pids)
        found = {(r["instance_id"], r["provider_message_id"]): r for r in rows}
        now = utcnow()
        ev: list[list[Any]] = [[] for _ in range(12)]
        upd: list[list[Any]] = [[] for _ in range(8)]
        cas_ids: list[str] = []
        cas_versions: list[int] = []
        message_of: dict[int, str] = {}
        changes: dict[int, MessageChange] = {}
        log_rows: list[dict[str, Any]] = []
        for index in indices:
            event, payload, headers, received_at = items[index]
            result = results[index]
            row = found.get((event.instance_id, event.provider_message_id))
            if row is not None and row["instance_reason"] == Reason.DELIVERY_STALLED:
                slow.append(index)
                continue
            message_id: str | None = None
            if row is None or event.status is None:
                result.reason = EventReason.UNKNOWN_MESSAGE
            else:
                message_id = row["id"]
                current = MessageState(row["state"])
                change = status_change(current, event.status, "webhook", event.moment or received_at)
                new_state = MessageState(change.to_state) if change.applied else current
                result.reason = EventReason.APPLIED if change.applied else EventReason.STALE_STATUS
                changes[index] = MessageChange(message_id, change, row["trace_id"], row["span_id"], row["sent_at"])
                failed = change.applied and new_state is MessageState.FAILED
                written = _StatusFacts(
                    id=message_id,
                    instance_id=row["instance_id"],
                    to=row["recipient"],
                    provider_message_id=row["provider_message_id"],
                    attempts=row["attempts"],
                    version=row["version"] + 1,
                    created_at=row["created_at"],
                    sent_at=row["sent_at"],
                    failure_reason=Reason.PROVIDER_ERROR.value if failed else "",
                    failure_detail=STATUS_FAILED_DETAIL if failed else "",
                )
                log_rows.extend(changelog.change_row(c) for c in change_log.message_changes(written, change))
                message_of[index] = message_id
                cas_ids.append(message_id)
                cas_versions.append(row["version"])
                for column, value in zip(
                    upd,
                    (
                        message_id,
                        new_state.value,
                        change.applied and new_state is MessageState.FAILED,
                        Reason.PROVIDER_ERROR.value,
                        STATUS_FAILED_DETAIL,
                        _change_to_json(change),
                        now,
                        result.event_id,
                    ),
                    strict=True,
                ):
                    column.append(value)
            row = _event_row(event, result.event_id, result.reason, received_at, payload, headers)
            row.update(parked=message_id is None, message_id=message_id)
            for column, name in zip(ev, _EVENT_COLUMNS, strict=True):
                column.append(row[name])
        if not ev[0]:
            return []
        async with self._status_lease.driver(pg_fast.APPLY_STATUSES) as driver:
            outcome = await driver.fetchrow(
                pg_fast.APPLY_STATUSES, cas_ids, cas_versions, *ev, *upd, *changelog.as_columns(log_rows)
            )
        locked, stored = set(outcome["locked"]), set(outcome["stored"])
        moved: list[int] = []
        stalled = set(slow)
        for index in indices:
            if index in stalled:
                continue
            if results[index].event_id in stored:
                if index in changes:
                    results[index].message_changes.append(changes[index])
            elif index in message_of and message_of[index] not in locked:
                moved.append(index)
            else:
                duplicates.append(index)
        return moved

    @staticmethod
    def _update_params(before: MessageRecord, after: MessageRecord) -> dict[str, Any]:
        """Parameters of the compare-and-set UPDATE: `after`'s values, guarded by `before`'s version."""
        values = _message_values(after)
        values["version"] = before.version + 1
        values["b_id"] = values.pop("id")
        values["b_version"] = before.version
        return values

    async def _route(
        self, conn: AsyncConnection, event: ProviderEvent, received_at: datetime, result: IngestResult
    ) -> bool:
        """Applies the event; returns True when it must be parked for a message not stored yet."""
        if event.instance_id is None or event.route is Route.UNROUTABLE:
            return False
        if event.route in (Route.CONNECTION, Route.DISCONNECTION):
            trigger = InstanceTrigger.REPORT_RECONNECTED if event.connected else InstanceTrigger.REPORT_DISCONNECTED
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
            return False
        if event.status is None or event.provider_message_id is None:
            return False
        row = (
            await conn.execute(
                self._message_by_provider_id, {"pid": event.provider_message_id, "iid": event.instance_id}
            )
        ).first()
        if row is None:
            result.reason = EventReason.UNKNOWN_MESSAGE
            return True
        msg = _message(row)
        after = apply_status(msg, event.status, source="webhook", at=event.moment or received_at, now=utcnow())
        change = after.history[-1]
        await self._save_message(conn, msg, after)
        result.message_changes.append(MessageChange(after.id, change, after.trace_id, after.span_id, after.sent_at))
        result.reason = EventReason.APPLIED if change.applied else EventReason.STALE_STATUS
        if lifts_stall(change, row.instance_reason):
            # The one place a stall is lifted by a delivery; every batch lane sends statuses of
            # stalled instances here.
            resumed = await self._apply_instance_trigger(
                conn, after.instance_id, InstanceTrigger.REPORT_DELIVERY_RESUMED, "webhook", None, None, None
            )
            if resumed is not None and resumed.decision.changed:
                result.instance_changes.append(resumed)
        return False

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
            .join(
                messages,
                and_(
                    messages.c.provider_message_id == events.c.provider_message_id,
                    messages.c.instance_id == events.c.instance_id,
                ),
            )
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
            .join(
                messages,
                and_(
                    messages.c.provider_message_id == events.c.provider_message_id,
                    messages.c.instance_id == events.c.instance_id,
                ),
            )
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
            await changelog.append(conn, [change_log.message_stuck(m, now, m.state.value) for m in stuck])
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

    async def stall_candidates(self, instance_ids: Sequence[str], threshold: int) -> list[str]:
        """Of these instances, those whose last `threshold` stuck messages have no delivery
        status after them: one statement for a whole sweep (per-instance checks cost a
        transaction each, ~1 ms, with hundreds of instances in one sweep). The rule itself is
        re-checked by stall_if_stuck_run under the instance lock."""
        if not instance_ids:
            return []
        ranked = (
            select(
                open_messages.c.instance_id,
                open_messages.c.sent_at,
                func.row_number()
                .over(partition_by=open_messages.c.instance_id, order_by=open_messages.c.sent_at.desc())
                .label("rank"),
            )
            .where(_STUCK, open_messages.c.instance_id.in_(list(instance_ids)))
            .subquery()
        )
        delivered_after = (
            select(events.c.id)
            .where(
                events.c.instance_id == ranked.c.instance_id,
                events.c.received_at > ranked.c.sent_at,
                events.c.route == literal_column("'MESSAGE_STATUS'"),
                events.c.status.in_(_DELIVERY_STATUSES),
            )
            .exists()
        )
        query = select(ranked.c.instance_id).where(ranked.c.rank == threshold, ~delivered_after)
        async with self._auto.connect() as conn:
            return sorted(r[0] for r in await conn.execute(query))

    async def stall_if_stuck_run(self, instance_id: str, threshold: int) -> InstanceChange | None:
        """Stalls a CONNECTED instance whose last `threshold` sends are all stuck in SENT.

        The run is derived from the data, not counted on the hot path: the stuck messages sent
        after the instance's latest delivery (the rule: `stuck_run_stalls`). Read in proportion
        to open work: the `threshold` newest stuck messages (open-work index), and the latest
        delivery status (DELIVERED/READ/PLAYED) of the instance after the oldest of them.
        """
        async with self.transaction() as conn:
            # Only sends after the latest stall ended count: after an operator's clear (or a
            # reconnection) the messages stuck during the stall must not stall it again at once.
            since = (
                await conn.execute(select(instances.c.stall_ended_at).where(instances.c.id == instance_id))
            ).scalar()
            stuck = and_(_STUCK, open_messages.c.instance_id == instance_id)
            if since is not None:
                stuck = and_(stuck, open_messages.c.sent_at > since)
            newest_stuck = [
                r[0]
                for r in await conn.execute(
                    select(open_messages.c.sent_at)
                    .where(stuck)
                    .order_by(open_messages.c.sent_at.desc())
                    .limit(threshold)
                )
            ]
            last_delivery = None
            if newest_stuck:
                # The latest delivery status after the oldest of them (newest first: stops at once
                # on a delivering instance; a stalled one has few events since).
                last_delivery = (
                    await conn.execute(
                        select(events.c.received_at)
                        .where(
                            events.c.instance_id == instance_id,
                            events.c.received_at > newest_stuck[-1],
                            events.c.route == literal_column("'MESSAGE_STATUS'"),
                            events.c.status.in_(_DELIVERY_STATUSES),
                        )
                        .order_by(events.c.received_at.desc())
                        .limit(1)
                    )
                ).scalar()
            run = sum(1 for sent_at in newest_stuck if last_delivery is None or sent_at > last_delivery)
            if not stuck_run_stalls(run, threshold):
                return None
            # The one place a stall is set.
            change = await self._apply_instance_trigger(
                conn, instance_id, InstanceTrigger.REPORT_DELIVERY_STALLED, "sweeper", None, None, None
            )
            return change if change is not None and change.decision.changed else None


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


# Column order of pg_fast.APPLY_STATUSES' event arrays.
_EVENT_COLUMNS = (
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
