"""Delivery-history reads for the learned stall test (services/app/stall_watch.py): bounded by
window and limit, never by an instance's history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, or_, select

from adapters.persistence.schema import (
    events,
    messages,
)
from adapters.persistence.store_base import StoreBase
from statemachine.domain import (
    MessageState,
)
from statemachine.events import Route
from statemachine.ports import (
    AckSample,
    ReceiptSample,
    SendSample,
)

# An event about a message this service sent: the same provider id on the same instance.
_EVENT_OF_OUR_SEND = and_(
    messages.c.provider_message_id == events.c.provider_message_id,
    messages.c.instance_id == events.c.instance_id,
)


class DeliveryHistory(StoreBase):
    """Samples of sends, receipts and acks per instance."""

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
