"""The held messages (statemachine/hold.py): a HELD message and its hold row are written in one
transaction, and every move out of HELD deletes the row in the transaction that moves the message
(compare-and-set on its version, with its change-log event).

The dispatcher's claim is the outbound webhook claim's pattern: due rows read in due-time order,
locked with FOR UPDATE SKIP LOCKED on PostgreSQL (another replica skips them; SQLite has one
writer), deleted, and their messages moved HELD → PENDING in the same short transaction. A crash
after that commit leaves a PENDING message without a hold: the PENDING reconciliation settles it
(FAILED/OUTCOME_UNKNOWN past the grace), so it is never sent twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update

from adapters.persistence import changelog
from adapters.persistence.messages import locked_message, save_message
from adapters.persistence.rows import message_from_row, message_log_rows, message_values
from adapters.persistence.schema import message_holds, messages
from adapters.persistence.store_base import StoreBase
from statemachine import hold as rules
from statemachine.domain import MessageRecord, MessageState, Reason
from statemachine.hold import Hold, WaitsFor

h = message_holds.c


def _hold_values(hold: Hold) -> dict[str, Any]:
    return {
        "message_id": hold.message_id,
        "instance_id": hold.instance_id,
        "recipient": hold.recipient,
        "reason": hold.reason.value,
        "waits_for": hold.waits_for.value,
        "due_at": hold.due_at,
        "expires_at": hold.expires_at,
        "held_at": hold.held_at,
        "needs_release": hold.needs_release,
    }


def _hold(row: Any) -> Hold:
    m = row._mapping
    reason = Reason(m["reason"]) if m["reason"] in Reason.__members__ else Reason.HEALTH_UNKNOWN
    return Hold(
        m["message_id"],
        m["instance_id"],
        m["recipient"],
        reason,
        WaitsFor(m["waits_for"]),
        m["due_at"],
        m["expires_at"],
        m["held_at"],
        bool(m["needs_release"]),
    )


class HoldRepository(StoreBase):
    """message_holds with the messages they hold."""

    async def insert_held(self, msg: MessageRecord, hold: Hold) -> tuple[MessageRecord, bool]:
        """Stores a new HELD message with its hold, unless its idempotency key exists: then the
        stored message (not created)."""
        insert = (
            self._insert(messages)
            .values(message_values(msg))
            .on_conflict_do_nothing(index_elements=["instance_id", "idempotency_key"])
            .returning(messages.c.id)
        )
        async with self.transaction() as conn:
            if (await conn.execute(insert)).first() is not None:
                await conn.execute(message_holds.insert().values(_hold_values(hold)))
                await changelog.append_rows(conn, message_log_rows(None, msg))
                return msg, True
            row = (
                await conn.execute(
                    select(messages).where(
                        messages.c.instance_id == msg.instance_id, messages.c.idempotency_key == msg.idempotency_key
                    )
                )
            ).one()
        return message_from_row(row), False

    async def due(self, now: datetime, limit: int, *, exclude: Sequence[str] = ()) -> list[Hold]:
        """Up to `limit` holds due now, the oldest due first, then the oldest message (ids are
        time-ordered: a paced backlog goes out in the order it was sent); the index; no lock."""
        query = select(message_holds).where(h.due_at <= now)
        if exclude:  # instances the send policy paces right now (their holds wait as they are,
            # but not past their expiry: an expired one is ended whatever paces its instance)
            query = query.where(or_(h.instance_id.not_in(list(exclude)), h.expires_at <= now))
        query = query.order_by(h.due_at, h.message_id).limit(limit)
        async with self._auto.connect() as conn:
            return [_hold(r) for r in await conn.execute(query)]

    async def postpone(self, holds: Sequence[Hold]) -> None:
        """New due times for holds still waiting (no state change, no event)."""
        if not holds:
            return
        statement = update(message_holds).where(h.message_id == bindparam("b_id")).values(due_at=bindparam("b_due"))
        async with self.transaction() as conn:
            await conn.execute(statement, [{"b_id": x.message_id, "b_due": x.due_at} for x in holds])

    async def claim(
        self,
        message_ids: Sequence[str],
        now: datetime,
        *,
        give_up: Mapping[str, tuple[Reason, datetime]] | None = None,
    ) -> tuple[list[tuple[MessageRecord, Hold]], list[MessageRecord]]:
        """Claims the due holds among `message_ids` that no other replica holds: each message moves
        HELD → PENDING (released) or, past its expiry, HELD → FAILED (expired), or, named in
        `give_up` (the policy's reason and the time it allows the send, past the expiry),
        HELD → FAILED with that reason; and its hold row is deleted, in one transaction. Returns
        (released with their holds, ended)."""
        give_up = give_up or {}
        if not message_ids:
            return [], []
        query = select(message_holds).where(h.message_id.in_(list(message_ids)), h.due_at <= now)
        if self._pg:
            query = query.with_for_update(skip_locked=True)
        released: list[tuple[MessageRecord, Hold]] = []
        ended: list[MessageRecord] = []
        async with self.transaction() as conn:
            holds = [_hold(r) for r in await conn.execute(query)]
            if not holds:
                return [], []
            await conn.execute(delete(message_holds).where(h.message_id.in_([x.message_id for x in holds])))
            for hold in holds:
                msg = await locked_message(conn, hold.message_id)
                if msg is None or msg.state is not MessageState.HELD:
                    continue  # an orphan row (the message moved on): deleted above
                if hold.message_id in give_up:
                    reason, retry_at = give_up[hold.message_id]
                    after = rules.give_up(msg, reason, retry_at, hold.expires_at, now)
                elif rules.expired(hold, now):
                    after = rules.expire(msg, hold.reason, hold.expires_at, now)
                else:
                    after = rules.release(msg, now)
                if after is None:
                    continue
                await save_message(conn, msg, after)
                if after.state is MessageState.PENDING:
                    released.append((after, hold))
                else:
                    ended.append(after)
        return released, ended

    async def hold_again(
        self, msg: MessageRecord, hold: Hold, now: datetime, *, give_up: tuple[Reason, datetime] | None = None
    ) -> MessageRecord | None:
        """A released message blocked again at dispatch: PENDING → HELD with its new hold, or
        → FAILED when the hold has expired, or with `give_up`'s reason when the policy allows it
        only past the expiry. None when it is no longer PENDING (the reconciler got it)."""
        async with self.transaction() as conn:
            current = await locked_message(conn, msg.id)
            if current is None or current.state is not MessageState.PENDING:
                return None
            if give_up is not None:
                after = rules.give_up(current, give_up[0], give_up[1], hold.expires_at, now)
                if after is None:
                    return None
            elif rules.expired(hold, now):
                after = rules.expire(current, hold.reason, hold.expires_at, now)
                if after is None:
                    return None
            else:
                after = rules.hold_again(current, hold.reason, now)
                if after is None:
                    return None
                await conn.execute(message_holds.insert().values(_hold_values(hold)))
            await save_message(conn, current, after)
            return after

    async def cancel(self, message_id: str, by: str, now: datetime) -> tuple[MessageRecord | None, bool]:
        """(the message, cancelled). A message not HELD is returned as it is, not cancelled."""
        async with self.transaction() as conn:
            msg = await locked_message(conn, message_id)
            if msg is None or msg.state is not MessageState.HELD:
                return msg, False
            after = rules.cancel(msg, by, now)
            if after is None:
                return msg, False
            await conn.execute(delete(message_holds).where(h.message_id == message_id))
            await save_message(conn, msg, after)
            return after, True

    async def release_instance(self, instance_id: str, now: datetime) -> int:
        """The operator's ReleaseHeld: the instance's messages held for its health are due now and
        no longer wait for a release (the dispatcher sends them at the policy's pace; those the
        policy paces keep their time)."""
        async with self.transaction() as conn:
            result = await conn.execute(
                update(message_holds)
                .where(h.instance_id == instance_id, h.waits_for == WaitsFor.HEALTH.value)
                .values(due_at=now, needs_release=False)
            )
        return int(result.rowcount or 0)

    async def wake(self, instance_id: str, now: datetime) -> int:
        """The instance is CONNECTED again: its messages held for its health are due now, unless
        they wait for the operator's release."""
        async with self.transaction() as conn:
            result = await conn.execute(
                update(message_holds)
                .where(
                    h.instance_id == instance_id,
                    h.waits_for == WaitsFor.HEALTH.value,
                    h.needs_release.is_(False),
                    h.due_at > now,
                )
                .values(due_at=now)
            )
        return int(result.rowcount or 0)

    async def counts(self, instance_id: str) -> Counter[str]:
        """Held messages of one instance by reason (the instance's held rows only)."""
        query = select(h.reason, func.count()).where(h.instance_id == instance_id).group_by(h.reason)
        async with self._auto.connect() as conn:
            return Counter({r[0]: int(r[1]) for r in await conn.execute(query)})

    async def counts_by_instance(self, instance_ids: Sequence[str] | None) -> dict[str, Counter[str]]:
        """Held messages by instance and reason, for many instances in one grouped query (None: every
        instance). Reads the held rows only (message_holds keeps no history), through the
        (instance_id, reason) index."""
        query = select(h.instance_id, h.reason, func.count()).group_by(h.instance_id, h.reason)
        if instance_ids is not None:
            if not instance_ids:
                return {}
            query = query.where(h.instance_id.in_(list(instance_ids)))
        out: dict[str, Counter[str]] = {}
        async with self._auto.connect() as conn:
            for instance_id, reason, count in await conn.execute(query):
                out.setdefault(instance_id, Counter())[reason] = int(count)
        return out

    async def total(self) -> int:
        async with self._auto.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(message_holds))).scalar_one())

    async def get(self, message_id: str) -> Hold | None:
        async with self._auto.connect() as conn:
            row = (await conn.execute(select(message_holds).where(h.message_id == message_id))).first()
        return _hold(row) if row else None
