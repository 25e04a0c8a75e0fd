"""The send policy's store: one row per instance (policy, warm-up anchor, counters) and the
recipients it has messaged. `admit` decides and counts in one short transaction (the row locked
on PostgreSQL), so replicas share the budgets; every read is a primary-key lookup."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.persistence.schema import messages, policy_recipients, send_policies
from statemachine.send_policy import (
    ALLOW,
    PolicyCounters,
    PolicyRecord,
    PolicyVerdict,
    SendPolicy,
    consume,
    decide,
    policy_from_dict,
    policy_to_dict,
)

_COUNTERS = ("next_send_at", "minute_start", "minute_count", "hour_start", "hour_new", "day_start", "day_new")


def _record(row: Any) -> PolicyRecord:
    m = row._mapping
    return PolicyRecord(
        instance_id=m["instance_id"],
        policy=policy_from_dict(json.loads(m["policy"])),
        warmup_anchor=m["warmup_anchor"],
        counters=PolicyCounters(**{name: m[name] for name in _COUNTERS}),
        updated_at=m["updated_at"],
        updated_by=m["updated_by"],
    )


class SendPolicyRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    async def active_instances(self) -> set[str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(send_policies.c.instance_id, send_policies.c.policy))).all()
        return {r.instance_id for r in rows if policy_from_dict(json.loads(r.policy)).active}

    async def note_inbound(self, instance_id: str, sender: str, at: datetime) -> None:
        stmt = self._insert(policy_recipients).values(instance_id=instance_id, recipient=sender, last_inbound_at=at)
        stmt = stmt.on_conflict_do_update(
            index_elements=["instance_id", "recipient"], set_={"last_inbound_at": stmt.excluded.last_inbound_at}
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

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
        self, instance_id: str, policy: SendPolicy, *, warmup_anchor: datetime | None, by: str, now: datetime
    ) -> PolicyRecord:
        values = {
            "policy": json.dumps(policy_to_dict(policy), sort_keys=True),
            "warmup_anchor": warmup_anchor,
            "updated_at": now,
            "updated_by": by[:128],
        }
        stmt = self._insert(send_policies).values(instance_id=instance_id, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["instance_id"], set_=values)
        async with self.engine.begin() as conn:
            await conn.execute(stmt)
            row = (await conn.execute(select(send_policies).where(send_policies.c.instance_id == instance_id))).one()
        return _record(row)

    async def admit(self, instance_id: str, recipient: str, now: datetime, jitter_fraction: float) -> PolicyVerdict:
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(send_policies).where(send_policies.c.instance_id == instance_id).with_for_update()
                )
            ).first()
            if row is None:
                return ALLOW
            record = _record(row)
            if not record.policy.active:
                return ALLOW
            known = (
                await conn.execute(
                    select(policy_recipients.c.recipient).where(
                        policy_recipients.c.instance_id == instance_id, policy_recipients.c.recipient == recipient
                    )
                )
            ).first()
            new = known is None
            verdict = decide(record.policy, record.counters, now, new_recipient=new, warmup_anchor=record.warmup_anchor)
            if not verdict.allowed:
                return verdict
            after = consume(record.policy, record.counters, now, new_recipient=new, jitter_fraction=jitter_fraction)
            await conn.execute(
                send_policies.update()
                .where(send_policies.c.instance_id == instance_id)
                .values(**{name: getattr(after, name) for name in _COUNTERS})
            )
            if new:
                await conn.execute(
                    self._insert(policy_recipients)
                    .values(instance_id=instance_id, recipient=recipient, first_sent_at=now)
                    .on_conflict_do_nothing()
                )
            return verdict
