"""Outbound webhook subscriptions and their deliveries. Short transactions, compare-and-set.

Exactly one replica makes a given attempt: claiming a due delivery is one UPDATE that bumps its
attempt counter and pushes its due time out by a lease, over rows picked with
`FOR UPDATE SKIP LOCKED` on PostgreSQL (SQLite has one writer). The attempt number is the claim
token: only the claimer of attempt N may record its outcome, so a replica whose lease ran out
(it stalled) cannot overwrite the next attempt's result. A crashed claimer's lease simply
expires and the delivery is due again, with the same webhook-id.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.persistence.schema import webhook_deliveries, webhook_subscriptions
from statemachine.ports import (
    EXHAUSTED,
    PENDING,
    SUCCEEDED,
    ClaimedAttempt,
    DeliveryRecord,
    NewDelivery,
    SubscriptionRecord,
    SubscriptionStats,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _subscription(row: Row[Any]) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=row.id,
        url=row.url,
        secret=row.secret,
        event_types=list(json.loads(row.event_types)),
        instance_ids=list(json.loads(row.instance_ids)),
        owner=row.owner,
        description=row.description,
        enabled=bool(row.enabled),
        disabled_reason=row.disabled_reason,
        cursor=row.cursor,
        consecutive_failures=row.consecutive_failures,
        failed_attempts=row.failed_attempts,
        succeeded=row.succeeded,
        last_error=row.last_error,
        last_success_at=row.last_success_at,
        last_failure_at=row.last_failure_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
        timeouts=row.timeouts,
        refused=row.refused,
    )


def _delivery(row: Row[Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row.id,
        subscription_id=row.subscription_id,
        event_id=row.event_id,
        event_type=row.event_type,
        instance_id=row.instance_id,
        occurred_at=row.occurred_at,
        state=row.state,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


class WebhookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    def _insert(self) -> Any:
        return (postgresql.insert if self._postgres else sqlite.insert)(webhook_deliveries)

    # --- subscriptions -----------------------------------------------------------------------

    async def create_subscription(
        self,
        sub_id: str,
        *,
        url: str,
        secret: str,
        event_types: Sequence[str],
        instance_ids: Sequence[str],
        owner: str,
        description: str,
        enabled: bool,
        cursor: str,
    ) -> SubscriptionRecord:
        now = utcnow()
        values = {
            "id": sub_id,
            "url": url,
            "secret": secret,
            "event_types": json.dumps(sorted(set(event_types))),
            "instance_ids": json.dumps(sorted(set(instance_ids))),
            "owner": owner,
            "description": description,
            "enabled": enabled,
            "disabled_reason": "" if enabled else "DISABLED_BY_USER",
            "cursor": cursor,
            "created_at": now,
            "updated_at": now,
        }
        async with self.engine.begin() as conn:
            await conn.execute(webhook_subscriptions.insert().values(**values))
            row = (await conn.execute(select(webhook_subscriptions).where(webhook_subscriptions.c.id == sub_id))).one()
        return _subscription(row)

    async def get_subscription(self, sub_id: str) -> SubscriptionRecord | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(webhook_subscriptions).where(webhook_subscriptions.c.id == sub_id))
            ).one_or_none()
        return _subscription(row) if row is not None else None

    async def list_subscriptions(self, *, enabled_only: bool = False) -> list[SubscriptionRecord]:
        query = select(webhook_subscriptions).order_by(webhook_subscriptions.c.created_at, webhook_subscriptions.c.id)
        if enabled_only:
            query = query.where(webhook_subscriptions.c.enabled.is_(True))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_subscription(r) for r in rows]

    async def update_subscription(self, sub_id: str, **changes: Any) -> SubscriptionRecord | None:
        """Changes url/event_types/instance_ids/enabled/description/secret; None if it does not exist."""
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name in ("event_types", "instance_ids"):
                values[name] = json.dumps(sorted(set(value)))
            elif name == "enabled":
                values["enabled"] = bool(value)
                values["disabled_reason"] = "" if value else "DISABLED_BY_USER"
                if value:
                    values["consecutive_failures"] = 0
            else:
                values[name] = value
        values["updated_at"] = utcnow()
        values["version"] = webhook_subscriptions.c.version + 1
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(webhook_subscriptions).where(webhook_subscriptions.c.id == sub_id).values(**values)
            )
            if result.rowcount == 0:
                return None
            row = (await conn.execute(select(webhook_subscriptions).where(webhook_subscriptions.c.id == sub_id))).one()
        return _subscription(row)

    async def delete_subscription(self, sub_id: str) -> bool:
        async with self.engine.begin() as conn:
            await conn.execute(delete(webhook_deliveries).where(webhook_deliveries.c.subscription_id == sub_id))
            result = await conn.execute(delete(webhook_subscriptions).where(webhook_subscriptions.c.id == sub_id))
        return bool(result.rowcount)

    async def disable(self, sub_id: str, reason: str, error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(webhook_subscriptions)
                .where(webhook_subscriptions.c.id == sub_id)
                .values(
                    enabled=False,
                    disabled_reason=reason,
                    last_error=error,
                    updated_at=utcnow(),
                    version=webhook_subscriptions.c.version + 1,
                )
            )

    async def stats(self, sub_ids: Sequence[str]) -> dict[str, SubscriptionStats]:
        """Pending and exhausted counts and the oldest pending event, per subscription (index scans)."""
        if not sub_ids:
            return {}
        d = webhook_deliveries.c
        query = (
            select(d.subscription_id, d.state, func.count(), func.min(d.occurred_at))
            .where(d.subscription_id.in_(list(sub_ids)), d.state.in_([PENDING, EXHAUSTED]))
            .group_by(d.subscription_id, d.state)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found: dict[str, dict[str, tuple[int, Any]]] = {}
        for sub_id, state, count, oldest in rows:
            found.setdefault(sub_id, {})[state] = (int(count), oldest)
        out: dict[str, SubscriptionStats] = {}
        for sub_id in sub_ids:
            states = found.get(sub_id, {})
            pending, oldest = states.get(PENDING, (0, None))
            if isinstance(oldest, str):  # SQLite's min() of a stored datetime is its text
                oldest = datetime.fromisoformat(oldest)
            if oldest is not None and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=UTC)
            out[sub_id] = SubscriptionStats(pending, states.get(EXHAUSTED, (0, None))[0], oldest)
        return out

    # --- fan-out -----------------------------------------------------------------------------

    async def enqueue(
        self, sub_id: str, *, expected_cursor: str, new_cursor: str, deliveries: Sequence[NewDelivery]
    ) -> bool:
        """Adds deliveries and moves the subscription's cursor in one transaction; False when another
        replica moved the cursor first (then nothing is written: that replica enqueued the same events)."""
        now = utcnow()
        async with self.engine.begin() as conn:
            moved = await conn.execute(
                update(webhook_subscriptions)
                .where(webhook_subscriptions.c.id == sub_id, webhook_subscriptions.c.cursor == expected_cursor)
                .values(cursor=new_cursor)
            )
            if moved.rowcount != 1:
                await conn.rollback()
                return False
            if deliveries:
                rows = [
                    {
                        "subscription_id": sub_id,
                        "event_id": item.event_id,
                        "event_type": item.event_type,
                        "instance_id": item.instance_id,
                        "occurred_at": item.occurred_at,
                        "body": item.body,
                        "state": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for item in deliveries
                ]
                await conn.execute(
                    self._insert().on_conflict_do_nothing(index_elements=["subscription_id", "event_id"]), rows
                )
        return True

    # --- attempts ----------------------------------------------------------------------------

    async def claim_due(
        self, *, limit: int, lease: float, per_subscription: int | None = None, busy: Mapping[str, int] | None = None
    ) -> list[ClaimedAttempt]:
        """Claims up to `limit` due deliveries; with `per_subscription`, no subscription ends up with
        more than that many in flight, counting the `busy` ones the sender already has (its share
        of the sending slots): a subscription at its share is not even looked at."""
        busy = busy or {}
        exclude = [sub for sub, n in busy.items() if per_subscription is not None and n >= per_subscription]
        now = utcnow()
        d, s = webhook_deliveries.c, webhook_subscriptions.c
        window = limit if per_subscription is None else limit * 4
        due = (
            select(d.id, d.subscription_id)
            .join(webhook_subscriptions, s.id == d.subscription_id)
            .where(d.state == PENDING, d.next_attempt_at <= now, s.enabled.is_(True))
            .order_by(d.next_attempt_at, d.id)
            .limit(window)
        )
        if exclude:
            due = due.where(d.subscription_id.not_in(list(exclude)))
        if self._postgres:
            due = due.with_for_update(of=webhook_deliveries, skip_locked=True)
        async with self.engine.begin() as conn:
            picked = _fair_share((await conn.execute(due)).all(), limit, per_subscription, busy)
            if not picked:
                return []
            claimed = (
                await conn.execute(
                    update(webhook_deliveries)
                    .where(d.id.in_(picked))
                    .values(attempts=d.attempts + 1, next_attempt_at=now + timedelta(seconds=lease))
                    .returning(d.id, d.subscription_id, d.event_id, d.attempts, d.body, d.instance_id)
                )
            ).all()
            if not claimed:
                return []
            subs = {
                r.id: (r.url, r.secret, r.owner)
                for r in (
                    await conn.execute(
                        select(s.id, s.url, s.secret, s.owner).where(s.id.in_({row.subscription_id for row in claimed}))
                    )
                ).all()
            }
        out = []
        for r in sorted(claimed, key=lambda row: row.id):
            if r.subscription_id not in subs:
                continue
            url, secret, owner = subs[r.subscription_id]
            out.append(
                ClaimedAttempt(
                    r.id, r.subscription_id, r.event_id, r.attempts, url, secret, r.body, r.instance_id, owner
                )
            )
        return out

    async def record_success(self, attempt: ClaimedAttempt, status_code: int) -> bool:
        now = utcnow()
        d, s = webhook_deliveries.c, webhook_subscriptions.c
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(webhook_deliveries)
                .where(d.id == attempt.delivery_id, d.attempts == attempt.attempt, d.state == PENDING)
                .values(state=SUCCEEDED, last_status_code=status_code, last_error="", delivered_at=now)
            )
            if done.rowcount != 1:
                return False
            await conn.execute(
                update(webhook_subscriptions)
                .where(s.id == attempt.subscription_id)
                .values(consecutive_failures=0, succeeded=s.succeeded + 1, last_success_at=now)
            )
        return True

    async def record_failure(
        self,
        attempt: ClaimedAttempt,
        *,
        status_code: int,
        error: str,
        retry_at: datetime | None,
        kind: str = "",
    ) -> bool:
        """`retry_at` None: the schedule is used up, the delivery is kept as exhausted. `kind`
        "timeout" or "refused" also counts the attempt in the subscription's health."""
        now = utcnow()
        d, s = webhook_deliveries.c, webhook_subscriptions.c
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error[:500]}
        if retry_at is None:
            values["state"] = EXHAUSTED
        else:
            values["next_attempt_at"] = retry_at
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(webhook_deliveries)
                .where(d.id == attempt.delivery_id, d.attempts == attempt.attempt, d.state == PENDING)
                .values(**values)
            )
            if done.rowcount != 1:
                return False
            await conn.execute(
                update(webhook_subscriptions)
                .where(s.id == attempt.subscription_id)
                .values(
                    consecutive_failures=s.consecutive_failures + 1,
                    failed_attempts=s.failed_attempts + 1,
                    last_error=error[:500],
                    last_failure_at=now,
                    **({"timeouts": s.timeouts + 1} if kind == "timeout" else {}),
                    **({"refused": s.refused + 1} if kind == "refused" else {}),
                )
            )
        return True

    async def note_error(self, sub_id: str, error: str) -> None:
        """A failure that is no attempt (the fan-out of this subscription failed): shown as its last
        error, bounded."""
        s = webhook_subscriptions.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(webhook_subscriptions)
                .where(s.id == sub_id)
                .values(last_error=error[:500], last_failure_at=utcnow())
            )

    async def next_due_at(self) -> datetime | None:
        d, s = webhook_deliveries.c, webhook_subscriptions.c
        query = (
            select(func.min(d.next_attempt_at))
            .select_from(webhook_deliveries.join(webhook_subscriptions, s.id == d.subscription_id))
            .where(d.state == PENDING, s.enabled.is_(True))
        )
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            return None
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    # --- deliveries --------------------------------------------------------------------------

    async def list_deliveries(
        self, sub_id: str, *, states: Sequence[str] = (), limit: int = 100, before_id: int | None = None
    ) -> list[DeliveryRecord]:
        d = webhook_deliveries.c
        query = select(webhook_deliveries).where(d.subscription_id == sub_id)
        if states:
            query = query.where(d.state.in_(list(states)))
        if before_id is not None:
            query = query.where(d.id < before_id)
        query = query.order_by(d.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_delivery(r) for r in rows]

    async def replay(self, sub_id: str, delivery_ids: Sequence[int] = ()) -> int:
        """Exhausted deliveries (or the named ones, whatever their state) are due again now, with a
        fresh schedule and their original webhook-id."""
        d = webhook_deliveries.c
        where = [d.subscription_id == sub_id]
        if delivery_ids:
            where.append(d.id.in_(list(delivery_ids)))
            where.append(d.state != PENDING)
        else:
            where.append(d.state == EXHAUSTED)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(webhook_deliveries)
                .where(and_(*where))
                .values(state=PENDING, attempts=0, next_attempt_at=utcnow(), delivered_at=None)
            )
        return int(result.rowcount)


def _fair_share(
    candidates: Sequence[Any], limit: int, per_subscription: int | None, busy: Mapping[str, int]
) -> list[int]:
    """The due deliveries claim_due takes, oldest first: at most `limit`, and with
    `per_subscription` no subscription above that many in flight (its `busy` ones included)."""
    taken: Counter[str] = Counter(busy)
    picked: list[int] = []
    for row in candidates:
        if len(picked) >= limit:
            break
        if per_subscription is not None and taken[row.subscription_id] >= per_subscription:
            continue
        taken[row.subscription_id] += 1
        picked.append(row.id)
    return picked
