"""The send policy's store: one row per instance (policy, warm-up anchor, counters), the recipients
it has messaged or heard from, and the audit of every policy change.

The counters are shared by the replicas and every reservation is one short statement (or one
transaction of two for a new recipient), so the limits hold across replicas: a replica reserves a
slice of the per-minute cap at a time (`reserve_sends`), moves the interval floor only when it has
passed (`reserve_interval`), and learns-and-counts a new recipient only within the hour's and the
day's budgets (`count_new`). Every read is a primary-key lookup."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence.schema import (
    instance_transitions,
    messages,
    policy_recipients,
    send_policies,
    send_policy_audit,
)
from statemachine.send_policy import (
    DAY,
    HOUR,
    NewRecipient,
    PolicyChange,
    PolicyCounters,
    PolicyRecord,
    SendPolicy,
    policy_from_dict,
    policy_to_dict,
    window_start,
)

_COUNTERS = ("next_send_at", "minute_start", "minute_count", "hour_start", "hour_new", "day_start", "day_new")
_NO_LIMIT = 2**31 - 1


class _Spent(Exception):
    """The new-recipient budget is spent: the transaction that learned the recipient rolls back."""


def _record(row: Any) -> PolicyRecord:
    m = row._mapping
    return PolicyRecord(
        instance_id=m["instance_id"],
        policy=policy_from_dict(json.loads(m["policy"])),
        warmup_anchor=m["warmup_anchor"],
        counters=PolicyCounters(**{name: m[name] for name in _COUNTERS}),
        updated_at=m["updated_at"],
        updated_by=m["updated_by"],
        warmup_phone=m["warmup_phone"],
        optout_list=m["optout_list"],
    )


def _in_window(start: Any, count: Any, window: datetime) -> Any:
    """SQL: the stored count when it belongs to this window, else 0."""
    return case((start == window, count), else_=0)


def _state(record: PolicyRecord | None) -> dict[str, object] | None:
    if record is None:
        return None
    return policy_to_dict(record.policy) | {
        "warmup_anchor": record.warmup_anchor.isoformat() if record.warmup_anchor else "",
        "warmup_phone": record.warmup_phone or "",
        "optout_list": record.optout_list or "",
    }


class SendPolicyRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    async def policies(self) -> dict[str, PolicyRecord]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(send_policies))).all()
        return {r.instance_id: _record(r) for r in rows}

    async def note_inbound(self, instance_id: str, sender: str, at: datetime) -> None:
        stmt = self._insert(policy_recipients).values(instance_id=instance_id, recipient=sender, last_inbound_at=at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["instance_id", "recipient"], set_={"last_inbound_at": stmt.excluded.last_inbound_at}
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def known(self, instance_id: str, recipient: str) -> bool:
        query = select(policy_recipients.c.recipient).where(
            policy_recipients.c.instance_id == instance_id, policy_recipients.c.recipient == recipient
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def had_session(self, instance_id: str) -> bool:
        """Whether the instance was seen with a WhatsApp session (connected, even without a phone,
        or degraded) before its latest pairing began: then that pairing is not its first. Read once
        per completed pairing."""
        t = instance_transitions.c
        began = (
            select(func.max(t.id))
            .where(t.instance_id == instance_id, t.reason == "PAIRING_IN_PROGRESS")
            .scalar_subquery()
        )
        query = (
            select(t.id)
            .where(
                t.instance_id == instance_id,
                t.to_state.in_(("CONNECTED", "SESSION_INCOMPLETE", "DEGRADED")),
                t.id < func.coalesce(began, 0),
            )
            .limit(1)
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def message_id_by_key(self, instance_id: str, idempotency_key: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(messages.c.id).where(
                        messages.c.instance_id == instance_id, messages.c.idempotency_key == idempotency_key
                    )
                )
            ).first()
        return str(row.id) if row is not None else None

    async def get_policy(self, instance_id: str) -> PolicyRecord | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(send_policies).where(send_policies.c.instance_id == instance_id))).first()
        return _record(row) if row is not None else None

    async def set_policy(
        self,
        instance_id: str,
        policy: SendPolicy,
        *,
        warmup_anchor: datetime | None,
        by: str,
        now: datetime,
        change: str = "SET",
        warmup_phone: str | None = None,
        optout_list: str | None = None,
    ) -> PolicyRecord:
        values = {
            "policy": json.dumps(policy_to_dict(policy), sort_keys=True),
            "warmup_anchor": warmup_anchor,
            "warmup_phone": warmup_phone,
            "optout_list": optout_list,
        }
        async with self.engine.begin() as conn:
            before = await self._locked(conn, instance_id)
            return await self._write(conn, instance_id, before, values, by=by, now=now, change=change)

    async def anchor_warmup(
        self,
        instance_id: str,
        *,
        phone: str | None,
        restart: bool,
        policy_if_inactive: SendPolicy | None,
        change: str,
        now: datetime,
        by: str = "connection",
    ) -> PolicyRecord:
        """One transaction: record the phone identity the ramp is anchored on (None: keep the stored
        one, or "" = awaiting the first phone); `restart`: the ramp starts now. The stored policy is
        kept when active (read under the row lock, so a change made meanwhile is never lost), else
        `policy_if_inactive` when given."""
        async with self.engine.begin() as conn:
            before = await self._locked(conn, instance_id)
            stored = before.policy if before is not None else SendPolicy()
            policy = stored if stored.active or policy_if_inactive is None else policy_if_inactive
            anchor = now if restart else (before.warmup_anchor if before is not None else None)
            if anchor is None and policy.warmup_days:
                anchor = now
            values = {
                "policy": json.dumps(policy_to_dict(policy), sort_keys=True),
                "warmup_anchor": anchor,
                "warmup_phone": phone if phone is not None else (before.warmup_phone if before else None) or "",
                "optout_list": before.optout_list if before is not None else None,
            }
            return await self._write(conn, instance_id, before, values, by=by, now=now, change=change)

    async def _locked(self, conn: AsyncConnection, instance_id: str) -> PolicyRecord | None:
        pick = select(send_policies).where(send_policies.c.instance_id == instance_id)
        row = (await conn.execute(pick.with_for_update())).first()
        return _record(row) if row is not None else None

    async def _write(
        self,
        conn: AsyncConnection,
        instance_id: str,
        before: PolicyRecord | None,
        values: dict[str, Any],
        *,
        by: str,
        now: datetime,
        change: str,
    ) -> PolicyRecord:
        """Upserts the policy row and appends its audit row (before/after), in the caller's transaction."""
        values = values | {"updated_at": now, "updated_by": by[:128]}
        stmt = self._insert(send_policies).values(instance_id=instance_id, **values)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=values))
        pick = select(send_policies).where(send_policies.c.instance_id == instance_id)
        after = _record((await conn.execute(pick)).one())
        await conn.execute(
            send_policy_audit.insert().values(
                instance_id=instance_id,
                at=now,
                by=by[:128],
                change=change[:32],
                before=json.dumps(_state(before), sort_keys=True),
                after=json.dumps(_state(after), sort_keys=True),
            )
        )
        return after

    async def history(self, instance_id: str, *, limit: int, before_id: int) -> list[tuple[int, PolicyChange]]:
        query = select(send_policy_audit).where(send_policy_audit.c.instance_id == instance_id)
        if before_id:
            query = query.where(send_policy_audit.c.id < before_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(send_policy_audit.c.id.desc()).limit(limit))).all()
        return [
            (
                int(r.id),
                PolicyChange(r.instance_id, r.at, r.by, r.change, json.loads(r.before), json.loads(r.after)),
            )
            for r in rows
        ]

    async def reserve_sends(self, instance_id: str, minute: datetime, want: int, limit: int) -> bool:
        current = _in_window(send_policies.c.minute_start, send_policies.c.minute_count, minute)
        stmt = (
            update(send_policies)
            .where(send_policies.c.instance_id == instance_id, current + want <= limit)
            .values(minute_start=minute, minute_count=current + want)
        )
        async with self.engine.begin() as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def release_sends(self, instance_id: str, minute: datetime, count: int) -> None:
        stmt = (
            update(send_policies)
            .where(
                send_policies.c.instance_id == instance_id,
                send_policies.c.minute_start == minute,
                send_policies.c.minute_count >= count,
            )
            .values(minute_count=send_policies.c.minute_count - count)
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def reserve_interval(self, instance_id: str, now: datetime, next_at: datetime) -> datetime | None:
        floor = send_policies.c.next_send_at
        stmt = (
            update(send_policies)
            .where(send_policies.c.instance_id == instance_id, or_(floor.is_(None), floor <= now))
            .values(next_send_at=next_at)
        )
        async with self.engine.begin() as conn:
            if (await conn.execute(stmt)).rowcount:
                return None
            row = (await conn.execute(select(floor).where(send_policies.c.instance_id == instance_id))).first()
        return row.next_send_at if row is not None and row.next_send_at is not None else now + timedelta(seconds=1)

    async def count_new(
        self, instance_id: str, recipient: str, now: datetime, *, per_hour: int, per_day: int
    ) -> NewRecipient:
        hour, day = window_start(now, HOUR), window_start(now, DAY)
        hour_new = _in_window(send_policies.c.hour_start, send_policies.c.hour_new, hour)
        day_new = _in_window(send_policies.c.day_start, send_policies.c.day_new, day)
        learn = (
            self._insert(policy_recipients)
            .values(instance_id=instance_id, recipient=recipient, first_sent_at=now)
            .on_conflict_do_nothing()
        )
        count = (
            update(send_policies)
            .where(
                send_policies.c.instance_id == instance_id,
                and_(hour_new < (per_hour or _NO_LIMIT), day_new < (per_day or _NO_LIMIT)),
            )
            .values(hour_start=hour, hour_new=hour_new + 1, day_start=day, day_new=day_new + 1)
        )
        try:
            async with self.engine.begin() as conn:
                if not (await conn.execute(learn)).rowcount:
                    return NewRecipient.KNOWN
                if (await conn.execute(count)).rowcount:
                    return NewRecipient.COUNTED
                raise _Spent  # rolls the recipient back: it stays new
        except _Spent:
            return NewRecipient.REFUSED
