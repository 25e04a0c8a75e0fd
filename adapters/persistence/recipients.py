"""The number checks' cache: one row per (instance, recipient), primary-key reads only."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.persistence.schema import messages, recipient_checks
from statemachine.recipients import NumberCheck


def _check(row: Any) -> NumberCheck:
    m = row._mapping
    return NumberCheck(
        m["recipient"], bool(m["on_whatsapp"]), canonical=m["canonical"], lid=m["lid"], checked_at=m["checked_at"]
    )


class RecipientCheckRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    async def has_absent(self, instance_id: str) -> bool:
        query = (
            select(recipient_checks.c.recipient)
            .where(recipient_checks.c.instance_id == instance_id, recipient_checks.c.on_whatsapp.is_(False))
            .limit(1)
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def absent_of(self, instance_id: str) -> dict[str, datetime]:
        """recipient -> checked_at of every recipient of the instance cached as absent."""
        query = select(recipient_checks.c.recipient, recipient_checks.c.checked_at).where(
            recipient_checks.c.instance_id == instance_id, recipient_checks.c.on_whatsapp.is_(False)
        )
        async with self.engine.connect() as conn:
            return {r.recipient: r.checked_at for r in (await conn.execute(query)).all()}

    async def checked_since(self, since: datetime, limit: int) -> list[tuple[str, NumberCheck]]:
        """(instance id, answer) of every answer stored at or after `since`, oldest first."""
        query = (
            select(recipient_checks)
            .where(recipient_checks.c.checked_at >= since)
            .order_by(recipient_checks.c.checked_at)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [(r.instance_id, _check(r)) for r in (await conn.execute(query)).all()]

    async def recipient_of(self, instance_id: str, provider_message_id: str) -> str | None:
        """The recipient of the instance's message with this provider id (its provider-id index)."""
        query = select(messages.c.recipient).where(
            messages.c.provider_message_id == provider_message_id, messages.c.instance_id == instance_id
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query.limit(1))).first()
        return str(row.recipient) if row is not None else None

    async def get(self, instance_id: str, recipient: str) -> NumberCheck | None:
        query = select(recipient_checks).where(
            recipient_checks.c.instance_id == instance_id, recipient_checks.c.recipient == recipient
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _check(row) if row is not None else None

    async def put(self, instance_id: str, check: NumberCheck) -> None:
        if check.exists is None or check.checked_at is None:
            return
        values = {
            "on_whatsapp": check.exists,
            "canonical": check.canonical[:128],
            "lid": check.lid[:128],
            "checked_at": check.checked_at,
        }
        stmt = self._insert(recipient_checks).values(instance_id=instance_id, recipient=check.recipient, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["instance_id", "recipient"], set_=values)
        async with self.engine.begin() as conn:
            await conn.execute(stmt)
