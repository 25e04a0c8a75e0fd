"""The recovery audit: operator actions, their per-instance limit (reserved atomically) and
their outcomes."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update

from adapters.persistence.schema import (
    instances,
    recovery_actions,
)
from adapters.persistence.store_base import StoreBase
from statemachine.domain import (
    AUTOMATIC_REQUESTERS,
    RecoveryAction,
)
from statemachine.ports import (
    RecoveryReservation,
)


class RecoveryAudit(StoreBase):
    """The `recovery_actions` rows."""

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
