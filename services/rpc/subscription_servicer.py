"""The thin servicer of WebhookSubscriptionService (proto ↔ domain, scope checks; the rules are the
subscriptions use case's, services/app/webhook_subscriptions.py)."""

from __future__ import annotations

from typing import Any

from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from services.app.subscriptions import display_url
from services.app.webhook_subscriptions import WebhookSubscriptions
from services.rpc.errors import grpc_errors
from services.rpc.event_mapping import TYPE_TO_PB
from services.rpc.event_servicers import DEFAULT_PAGE, MAX_PAGE, Ctx, change_kinds, decode_cursor, utcnow
from services.rpc.mapping import ts
from statemachine.changes import ChangeKind, CursorCodec
from statemachine.errors import InvalidRequest
from statemachine.ports import DELIVERY_STATES, DeliveryRecord, SubscriptionRecord, SubscriptionStats
from statemachine.validation import (
    MAX_DELIVERY_IDS,
    MAX_EVENT_TYPES,
    Violation,
    parse_page_token,
    validate_description,
    validate_instance_filter,
    validate_subscription_id,
)

_STATE_TO_PB = {
    "pending": events_pb2.DELIVERY_STATE_PENDING,
    "succeeded": events_pb2.DELIVERY_STATE_SUCCEEDED,
    "exhausted": events_pb2.DELIVERY_STATE_EXHAUSTED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def _check_lists(instance_ids: Any, types: Any) -> None:
    violations = validate_instance_filter("instance_ids", list(instance_ids))
    if len(types) > MAX_EVENT_TYPES:
        violations.append(Violation("types", f"at most {MAX_EVENT_TYPES} event types"))
    if violations:
        raise InvalidRequest(violations)


def _check_id(field: str, value: str) -> str:
    if violations := validate_subscription_id(field, value):
        raise InvalidRequest(violations)
    return value.strip()


def subscription_pb(
    sub: SubscriptionRecord, stats: SubscriptionStats | None = None, *, with_secret: bool = False
) -> events_pb2.WebhookSubscription:
    now = utcnow()
    out = events_pb2.WebhookSubscription(
        id=sub.id,
        url=display_url(sub.url),
        types=[TYPE_TO_PB[ChangeKind(k)] for k in sub.event_types],  # type: ignore[misc]
        instance_ids=sub.instance_ids,
        enabled=sub.enabled,
        disabled_reason=sub.disabled_reason,
        description=sub.description,
        secret=sub.secret if with_secret else "",
        created_at=ts(sub.created_at),
        updated_at=ts(sub.updated_at),
        stats=events_pb2.WebhookSubscriptionStats(
            consecutive_failures=sub.consecutive_failures,
            failed_attempts=sub.failed_attempts,
            succeeded=sub.succeeded,
            last_error=sub.last_error,
            last_success_at=ts(sub.last_success_at),
            last_failure_at=ts(sub.last_failure_at),
            timeouts=sub.timeouts,
            refused=sub.refused,
        ),
    )
    if stats is not None:
        out.stats.pending = stats.pending
        out.stats.exhausted = stats.exhausted
        if stats.oldest_pending_at is not None:
            out.stats.lag_seconds = max(0.0, (now - stats.oldest_pending_at).total_seconds())
    return out


def delivery_pb(d: DeliveryRecord) -> events_pb2.WebhookDelivery:
    return events_pb2.WebhookDelivery(
        id=d.id,
        subscription_id=d.subscription_id,
        webhook_id=d.event_id,
        type=TYPE_TO_PB.get(ChangeKind(d.event_type), 0),  # type: ignore[arg-type]
        instance_id=d.instance_id,
        state=_STATE_TO_PB.get(d.state, 0),  # type: ignore[arg-type]
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        next_attempt_at=ts(d.next_attempt_at) if d.state == "pending" else None,
        created_at=ts(d.created_at),
        delivered_at=ts(d.delivered_at),
    )


class WebhookSubscriptionServicer(events_pb2_grpc.WebhookSubscriptionServiceServicer):
    """The request's form is checked here; the rules are the use case's (WebhookSubscriptions)."""

    def __init__(self, subscriptions: WebhookSubscriptions, cursors: CursorCodec | None = None) -> None:
        self.subs = subscriptions
        self.cursors = cursors  # the event cursors clients hold (start_cursor)

    @grpc_errors
    async def CreateWebhookSubscription(
        self, request: events_pb2.CreateWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        if violations := validate_description("description", request.description):
            raise InvalidRequest(violations)
        _check_lists(request.instance_ids, request.types)
        await self.subs.check_url(request.url)
        kinds = change_kinds("types", request.types) or []
        start = request.start_cursor
        shown = await self.subs.create(
            url=request.url,
            kinds=kinds,
            instance_ids=list(request.instance_ids),
            description=request.description,
            enabled=not request.disabled,
            start=(lambda: decode_cursor("start_cursor", start, self.cursors)) if start else None,
        )
        return subscription_pb(*shown, with_secret=True)

    @grpc_errors
    async def GetWebhookSubscription(
        self, request: events_pb2.GetWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        return subscription_pb(*await self.subs.shown(await self.subs.owned(_check_id("id", request.id))))

    @grpc_errors
    async def ListWebhookSubscriptions(
        self, request: events_pb2.ListWebhookSubscriptionsRequest, context: Ctx
    ) -> events_pb2.ListWebhookSubscriptionsResponse:
        return events_pb2.ListWebhookSubscriptionsResponse(
            subscriptions=[subscription_pb(sub, stats) for sub, stats in await self.subs.listed()]
        )

    @grpc_errors
    async def UpdateWebhookSubscription(
        self, request: events_pb2.UpdateWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        sub_id = _check_id("id", request.id)
        _check_lists(request.instance_ids, request.types)
        if request.HasField("description") and (violations := validate_description("description", request.description)):
            raise InvalidRequest(violations)
        changes: dict[str, Any] = {}
        if request.HasField("url"):
            await self.subs.check_url(request.url)
            changes["url"] = request.url
        if request.set_types:
            changes["event_types"] = [k.value for k in (change_kinds("types", request.types) or [])]
        if request.set_instance_ids:
            changes["instance_ids"] = list(request.instance_ids)
        if request.HasField("enabled"):
            changes["enabled"] = request.enabled
        if request.HasField("description"):
            changes["description"] = request.description
        return subscription_pb(*await self.subs.update(sub_id, changes))

    @grpc_errors
    async def DeleteWebhookSubscription(
        self, request: events_pb2.DeleteWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.DeleteWebhookSubscriptionResponse:
        await self.subs.delete(_check_id("id", request.id))
        return events_pb2.DeleteWebhookSubscriptionResponse()

    @grpc_errors
    async def RotateWebhookSecret(
        self, request: events_pb2.RotateWebhookSecretRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        return subscription_pb(*await self.subs.rotate_secret(_check_id("id", request.id)), with_secret=True)

    @grpc_errors
    async def ListWebhookDeliveries(
        self, request: events_pb2.ListWebhookDeliveriesRequest, context: Ctx
    ) -> events_pb2.ListWebhookDeliveriesResponse:
        sub_id = _check_id("subscription_id", request.subscription_id)
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            raise InvalidRequest([Violation("page_size", f"must be between 0 and {MAX_PAGE}")])
        size = request.page_size or DEFAULT_PAGE
        if len(request.states) > len(_STATE_FROM_PB):
            raise InvalidRequest([Violation("states", f"at most {len(_STATE_FROM_PB)} states")])
        states = [_STATE_FROM_PB[s] for s in request.states if s in _STATE_FROM_PB]
        try:
            before = parse_page_token("page_token", request.page_token)
        except ValueError:
            raise InvalidRequest([Violation("page_token", "not a page token of this list")]) from None
        rows = await self.subs.deliveries(sub_id, states=states or DELIVERY_STATES, limit=size, before_id=before)
        token = str(rows[-1].id) if len(rows) == size else ""
        return events_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(d) for d in rows], next_page_token=token
        )

    @grpc_errors
    async def ReplayWebhookDeliveries(
        self, request: events_pb2.ReplayWebhookDeliveriesRequest, context: Ctx
    ) -> events_pb2.ReplayWebhookDeliveriesResponse:
        sub_id = _check_id("subscription_id", request.subscription_id)
        if len(request.delivery_ids) > MAX_DELIVERY_IDS:
            got = len(request.delivery_ids)
            raise InvalidRequest([Violation("delivery_ids", f"at most {MAX_DELIVERY_IDS} ids per call (got {got})")])
        if any(i <= 0 for i in request.delivery_ids):
            raise InvalidRequest([Violation("delivery_ids", "delivery ids are positive numbers")])
        return events_pb2.ReplayWebhookDeliveriesResponse(replayed=await self.subs.replay(sub_id, request.delivery_ids))
