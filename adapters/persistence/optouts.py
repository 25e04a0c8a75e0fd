"""The suppression list (opt-outs) and its audit trail. Primary-key reads only on the send path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.persistence.schema import opt_out_audit, opt_outs, send_policies
from statemachine.optout import OptOut, OptOutSource


def _opt_out(row: Any) -> OptOut:
    m = row._mapping
    return OptOut(
        instance_id=m["instance_id"],
        recipient=m["recipient"],
        source=OptOutSource(m["source"]),
        detail=m["detail"],
        created_at=m["created_at"],
        created_by=m["created_by"],
    )


class OptOutRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    async def has_opt_outs(self, instance_id: str) -> bool:
        query = select(opt_outs.c.recipient).where(opt_outs.c.instance_id == instance_id).limit(1)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first() is not None

    async def members(self, key: str) -> set[str]:
        """Every recipient of one list (a replica's first read of it; then `changes_since`)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(opt_outs.c.recipient).where(opt_outs.c.instance_id == key))).all()
        return {r.recipient for r in rows}

    async def last_change(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.max(opt_out_audit.c.id)))).scalar() or 0)

    async def changes_since(self, after_id: int, limit: int) -> list[tuple[int, str, str]]:
        """(audit id, list, recipient) of the additions and removals after `after_id`, oldest first."""
        query = (
            select(opt_out_audit.c.id, opt_out_audit.c.instance_id, opt_out_audit.c.recipient)
            .where(opt_out_audit.c.id > after_id)
            .order_by(opt_out_audit.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [(int(r.id), r.instance_id, r.recipient) for r in (await conn.execute(query)).all()]

    async def present(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (list, recipient) pairs are on their list now."""
        if not pairs:
            return set()
        query = select(opt_outs.c.instance_id, opt_outs.c.recipient).where(
            tuple_(opt_outs.c.instance_id, opt_outs.c.recipient).in_(pairs)
        )
        async with self.engine.connect() as conn:
            return {(r.instance_id, r.recipient) for r in (await conn.execute(query)).all()}

    async def shared_lists(self) -> dict[str, str]:
        """instance id -> the shared list it names (instances on their own list are not listed)."""
        query = select(send_policies.c.instance_id, send_policies.c.optout_list).where(
            send_policies.c.optout_list.is_not(None), send_policies.c.optout_list != ""
        )
        async with self.engine.connect() as conn:
            return {r.instance_id: r.optout_list for r in (await conn.execute(query)).all()}

    async def count(self, key: str) -> int:
        query = select(func.count()).select_from(opt_outs).where(opt_outs.c.instance_id == key)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def is_suppressed(self, instance_id: str, recipient: str) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(opt_outs.c.recipient).where(
                        opt_outs.c.instance_id == instance_id, opt_outs.c.recipient == recipient
                    )
                )
            ).first()
        return row is not None

    async def add(self, opt_out: OptOut) -> bool:
        values = {
            "instance_id": opt_out.instance_id,
            "recipient": opt_out.recipient,
            "source": opt_out.source.value,
            "detail": opt_out.detail[:256],
            "created_at": opt_out.created_at,
            "created_by": opt_out.created_by[:128],
        }
        async with self.engine.begin() as conn:
            result = await conn.execute(self._insert(opt_outs).values(**values).on_conflict_do_nothing())
            added = bool(result.rowcount)
            if added:
                await conn.execute(
                    opt_out_audit.insert().values(
                        instance_id=opt_out.instance_id,
                        recipient=opt_out.recipient,
                        action="ADDED",
                        source=opt_out.source.value,
                        detail=values["detail"],
                        at=opt_out.created_at,
                        by=values["created_by"],
                    )
                )
        return added

    async def remove(self, instance_id: str, recipient: str, *, by: str, note: str, at: datetime) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(opt_outs).where(opt_outs.c.instance_id == instance_id, opt_outs.c.recipient == recipient)
            )
            removed = bool(result.rowcount)
            if removed:
                await conn.execute(
                    opt_out_audit.insert().values(
                        instance_id=instance_id,
                        recipient=recipient,
                        action="REMOVED",
                        source=OptOutSource.API.value,
                        detail=note[:256],
                        at=at,
                        by=by[:128],
                    )
                )
        return removed

    async def list(self, instance_id: str, *, limit: int, after: str) -> list[OptOut]:
        query = select(opt_outs).where(opt_outs.c.instance_id == instance_id)
        if after:
            query = query.where(opt_outs.c.recipient > after)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(opt_outs.c.recipient).limit(limit))).all()
        return [_opt_out(r) for r in rows]
