"""The messages aggregate: the group-committed insert (SQLAlchemy and asyncpg spellings side by
side), reads, pages, retry, and the version compare-and-set update every other message write
uses (`save_message`, inside a caller's transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence import changelog, history, pg_fast
from adapters.persistence.batching import Batcher
from adapters.persistence.rows import (
    STUCK,
    decode_page_token,
    encode_page_token,
    message_from_row,
    message_log_rows,
    message_values,
    utcnow,
)
from adapters.persistence.schema import (
    messages,
    open_messages,
)
from adapters.persistence.store_base import StoreBase
from statemachine.domain import (
    MessageRecord,
    MessageState,
    Reason,
)
from statemachine.message_machine import (
    MessageTrigger,
    transition_message,
)
from statemachine.ports import (
    ConcurrentUpdateError,
)

# The version compare-and-set update of a message (every write but the batched lanes).
UPDATE_MESSAGE = (
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


_MESSAGE_COLUMNS = tuple(name for name, _ in pg_fast.MESSAGE_COLUMNS)


# A message row and its change-log rows.
_NewMessage = tuple[dict[str, Any], list[dict[str, Any]]]


async def locked_message(conn: AsyncConnection, message_id: str) -> MessageRecord | None:
    row = (await conn.execute(select(messages).where(messages.c.id == message_id).with_for_update())).first()
    return message_from_row(row) if row else None


async def save_message(conn: AsyncConnection, before: MessageRecord, after: MessageRecord) -> None:
    result = await conn.execute(UPDATE_MESSAGE, update_params(before, after))
    if result.rowcount != 1:
        raise ConcurrentUpdateError(before.id)
    after.version = before.version + 1
    await changelog.append_rows(conn, message_log_rows(before, after))


def update_params(before: MessageRecord, after: MessageRecord) -> dict[str, Any]:
    """Parameters of the compare-and-set UPDATE: `after`'s values, guarded by `before`'s version."""
    values = message_values(after)
    del values["history"]
    values["entries"] = history.entries_json(after.history[len(before.history) :])
    values["version"] = before.version + 1
    values["b_id"] = values.pop("id")
    values["b_version"] = before.version
    return values


class MessageStore(StoreBase):
    """Messages: insert (group commit), read, list, retry."""

    def __init__(self, engine: AsyncEngine, *, group_commit_window: float = 0.0) -> None:
        super().__init__(engine, group_commit_window=group_commit_window)
        self._insert_lease = pg_fast.Lease(engine)
        # Hot statements are built once; each call only binds parameters.
        self._insert_message = self._insert(messages).on_conflict_do_nothing(
            index_elements=["instance_id", "idempotency_key"]
        )
        self._insert_message_returning = self._insert_message.returning(messages.c.id)
        self._batcher: Batcher[_NewMessage, bool] = Batcher(
            self._insert_messages_batch, self._insert_message_alone, window=group_commit_window
        )

    async def aclose(self) -> None:
        await self._insert_lease.aclose()
        await super().aclose()

    async def insert_message(self, msg: MessageRecord) -> tuple[MessageRecord, bool]:
        """Inserts unless (instance_id, idempotency_key) exists; then returns the stored one.

        Concurrent inserts are group-committed: one multi-row INSERT … ON CONFLICT DO NOTHING
        RETURNING per batch instead of one round-trip each (see _InsertBatcher).
        """
        if await self._batcher.submit((message_values(msg), message_log_rows(None, msg))):
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
            return message_from_row(row), False

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

    async def get_message(self, message_id: str) -> MessageRecord | None:
        async with self._auto.connect() as conn:
            row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()
        return message_from_row(row) if row else None

    async def reset_for_retry(
        self, message_id: str, *, source: str, trace_ids: tuple[str, str] = ("", "")
    ) -> MessageRecord:
        """FAILED → PENDING, attempts + 1. Raises LookupError / ValueError (not retryable)."""
        async with self.transaction() as conn:
            msg = await locked_message(conn, message_id)
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
            await save_message(conn, msg, after)
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
            rows = [message_from_row(r) for r in await conn.execute(query)]
        next_token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            next_token = encode_page_token(rows[-1].created_at, rows[-1].id)
        return rows, next_token

    @staticmethod
    def _stuck_page(instance_id: str, page_size: int, page_token: str) -> Any:
        """A page of stuck messages: the page is cut from the open-work index first, then its
        messages are fetched by id (never a join that starts from the history)."""
        page = select(open_messages.c.message_id, open_messages.c.created_at).where(STUCK)
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
