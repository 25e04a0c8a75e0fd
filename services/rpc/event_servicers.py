"""Thin servicers of EventService and WebhookSubscriptionService (proto ↔ domain, scope checks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc

from adapters.deadline import request_scope
from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from services.app.events import ChangeFeed, follow
from services.app.outbound import WebhookDispatcher, new_secret
from services.app.principals import PermissionDenied, current_principal
from services.app.subscriptions import check_resolved, check_url_target, creation_filter, display_url, visible
from services.observability.logs import register_secret
from services.rpc.errors import abort, build_status, grpc_errors, locale_of, status_for
from services.rpc.event_mapping import (
    TYPE_FROM_PB,
    TYPE_TO_PB,
    batch_response_bytes,
    event_pb,
    subscribe_response_bytes,
)
from services.rpc.mapping import ts
from statemachine.changes import (
    START,
    ChangeCursor,
    ChangeKind,
    CursorCodec,
    ForeignCursor,
    InvalidCursor,
    TamperedCursor,
)
from statemachine.errors import InvalidRequest
from statemachine.ports import (
    DELIVERY_STATES,
    ChangeLog,
    DeliveryRecord,
    SubscriptionRecord,
    SubscriptionStats,
    SubscriptionStore,
)
from statemachine.validation import (
    MAX_DELIVERY_IDS,
    MAX_EVENT_TYPES,
    Violation,
    parse_page_token,
    validate_description,
    validate_instance_filter,
    validate_subscription_id,
    validate_subscription_url,
)

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("wapi_guard.events")
MAX_PAGE = 1000
MAX_BATCH = 500  # events per SubscribeResponse (one tail page)
DEFAULT_PAGE = 100
_STATE_TO_PB = {
    "pending": events_pb2.DELIVERY_STATE_PENDING,
    "succeeded": events_pb2.DELIVERY_STATE_SUCCEEDED,
    "exhausted": events_pb2.DELIVERY_STATE_EXHAUSTED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def utcnow() -> datetime:
    return datetime.now(UTC)


class CursorRefused(Exception):
    """A well-formed cursor this log cannot resume from; the answer carries the valid range."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, field: str, oldest: ChangeCursor, head: ChangeCursor
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.field = code, reason, message, field
        self.oldest, self.head = oldest, head


def _decode(field: str, text: str, cursors: CursorCodec | None = None) -> ChangeCursor:
    try:
        return cursors.decode(text) if cursors is not None else ChangeCursor.decode(text)
    except InvalidCursor as error:
        raise InvalidRequest([Violation(field, str(error))]) from None


def _kinds(field: str, types: Any) -> list[ChangeKind] | None:
    kinds: set[ChangeKind] = set()
    for value in types:
        kind = TYPE_FROM_PB.get(value)
        if kind is None:
            raise InvalidRequest([Violation(field, f"unknown event type {value}")])
        kinds.add(kind)
    return sorted(kinds) or None


def _filter_instances(field: str, requested: Any) -> list[str] | None:
    """The request's instance filter, validated (count, each id) before any storage call, then
    limited to the caller's scope."""
    if violations := validate_instance_filter(field, requested):
        raise InvalidRequest(violations)
    return scoped_instances(field, requested)


def scoped_instances(field: str, requested: Any) -> list[str] | None:
    """The caller's filter within its token's scope: a scoped token never sees other instances."""
    ids = sorted({i.strip() for i in requested if i.strip()})
    scope = current_principal.get().instances
    if scope is None:
        return ids or None
    outside = [i for i in ids if i not in scope]
    if outside:
        raise PermissionDenied(outside[0])
    return ids or sorted(scope)


def _refused_status(error: CursorRefused, cursors: CursorCodec) -> grpc.Status:
    """OUT_OF_RANGE (expired, ahead of the head, another log) or INVALID_ARGUMENT (altered), with
    the valid range in ErrorInfo.metadata: `oldest_cursor` and `head_cursor`."""
    violations = [(error.field, error.message)] if error.code is grpc.StatusCode.INVALID_ARGUMENT else None
    return build_status(
        error.code,
        error.message,
        error.reason,
        {
            "field": error.field,
            "oldest_cursor": cursors.encode(error.oldest),
            "head_cursor": cursors.encode(error.head),
        },
        violations=violations,
    )


class EventServicer(events_pb2_grpc.EventServiceServicer):
    def __init__(
        self, repo: ChangeLog, feed: ChangeFeed, *, progress_interval: float, stall_timeout: float = 30.0
    ) -> None:
        self.repo = repo
        self.feed = feed
        self.progress_interval = progress_interval
        self.stall_timeout = stall_timeout

    async def _checked(self, field: str, text: str) -> ChangeCursor:
        """A client's cursor, decoded (a malformed one is INVALID_ARGUMENT before any storage
        call) and checked against this log: another log's, an altered one, one ahead of the head
        and one before retained history are refused with the valid range. Expired means: before
        the oldest kept change while older changes existed (its seq is not the first)."""
        refused: tuple[grpc.StatusCode, str, str] | None = None
        cursor = START
        try:
            cursor = self.feed.cursors.decode(text)
        except ForeignCursor as error:
            refused = (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_OTHER_LOG", f"{error}; start again from oldest_cursor")
        except TamperedCursor as error:
            refused = (grpc.StatusCode.INVALID_ARGUMENT, "CURSOR_TAMPERED", str(error))
        except InvalidCursor as error:
            raise InvalidRequest([Violation(field, str(error))]) from None
        oldest = await self.repo.oldest_change_cursor()
        head = await self.repo.head_change_cursor()
        if refused is None and cursor > head:
            refused = (
                grpc.StatusCode.OUT_OF_RANGE,
                "CURSOR_AHEAD",
                "cursor is ahead of the newest event of this log (another or a restored database?)",
            )
        if refused is None and cursor < oldest and oldest.seq > 0:
            refused = (
                grpc.StatusCode.OUT_OF_RANGE,
                "CURSOR_EXPIRED",
                "cursor is older than the oldest retained event; resume from oldest_cursor",
            )
        if refused is not None:
            raise CursorRefused(*refused, field, oldest, head)
        return cursor

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, context: Ctx
    ) -> AsyncIterator[events_pb2.SubscribeResponse]:
        cursor = ChangeCursor(0, 0)
        try:
            instance_ids = _filter_instances("filter.instance_ids", request.filter.instance_ids)
            kinds = _kinds("filter.types", request.filter.types)
            start = request.WhichOneof("start")
            with request_scope(context.time_remaining()):  # the start's reads are bounded as any call's
                if start == "cursor":
                    cursor = await self._checked("cursor", request.cursor)
                elif start == "from_oldest":
                    cursor = await self.repo.oldest_change_cursor()
                else:
                    cursor = await self.repo.head_change_cursor()
        except Exception as error:
            await self._fail(context, error)
        interval = (
            float(request.progress_interval_seconds) if request.progress_interval_seconds else self.progress_interval
        )
        interval = min(max(interval, 0.05), 3600.0)
        loop = asyncio.get_running_loop()
        # What is being handed to gRPC right now and since when: a write that stays pending means
        # the client reads nothing (HTTP/2 flow control); the watchdog closes such a stream.
        pending: list[Any] = [None, 0.0]
        watchdog = asyncio.create_task(self._watch_stall(context, pending), name="event-stream-stall")
        try:
            async for item in follow(
                self.repo,
                self.feed,
                cursor,
                instance_ids=instance_ids,
                kinds=kinds,
                progress_interval=interval,
                batch=min(max(request.max_events_per_response, 1), MAX_BATCH),
            ):
                pending[0], pending[1] = item.cursor, loop.time()
                if item.batch:
                    yield batch_response_bytes(item.batch, self.feed.cursors)  # type: ignore[misc]
                elif item.change is not None:
                    # encoded once for all streams
                    yield subscribe_response_bytes(item.change, self.feed.cursors)  # type: ignore[misc]
                else:
                    yield events_pb2.SubscribeResponse(
                        progress=events_pb2.Progress(cursor=self.feed.cursors.encode(item.cursor), at=ts(utcnow()))
                    )
                pending[0] = None
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await self._fail(context, error)
        finally:
            watchdog.cancel()

    async def _watch_stall(self, context: Ctx, pending: list[Any]) -> None:
        """Too slow means not reading: one write pending longer than the timeout. The stream is
        closed with the cursor of that pending item — it is queued ahead of the status, so a
        client that sees the status has read it (and everything before)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.stall_timeout / 4))
            cursor, since = pending
            if cursor is None or loop.time() - since <= self.stall_timeout:
                continue
            self.feed.cut_offs += 1
            resume = self.feed.cursors.encode(cursor)
            log.warning(
                "event stream of %s closed as too slow: it read nothing for %.1f s while events waited;"
                " it resumes from %s",
                current_principal.get().name,
                loop.time() - since,
                resume,
            )
            status = build_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "subscriber too slow: resume from resume_cursor",
                "SUBSCRIBER_TOO_SLOW",
                {"resume_cursor": resume},
            )
            # Completes once the client reads up to the status (or the connection ends).
            with contextlib.suppress(Exception):
                await context.abort(status.code, status.details, status.trailing_metadata)
            return

    async def _fail(self, context: Ctx, error: Exception) -> None:
        if isinstance(error, CursorRefused):
            await abort(context, _refused_status(error, self.feed.cursors))
        status = status_for(error, locale_of(context))
        if status is None:
            raise error
        await abort(context, status)

    async def ListEvents(self, request: events_pb2.ListEventsRequest, context: Ctx) -> events_pb2.ListEventsResponse:
        try:
            instance_ids = _filter_instances("filter.instance_ids", request.filter.instance_ids)
            kinds = _kinds("filter.types", request.filter.types)
            if request.page_size < 0 or request.page_size > MAX_PAGE:
                raise InvalidRequest([Violation("page_size", f"must be between 0 and {MAX_PAGE}")])
            size = request.page_size or DEFAULT_PAGE
            with request_scope(context.time_remaining()):  # bounded storage, as @grpc_errors does
                if request.WhichOneof("start") == "after_cursor":
                    cursor = await self._checked("after_cursor", request.after_cursor)
                else:
                    cursor = await self.repo.oldest_change_cursor()
                page = await self.repo.read_changes(cursor, limit=size, instance_ids=instance_ids, kinds=kinds)
        except Exception as error:
            await self._fail(context, error)
            raise
        return events_pb2.ListEventsResponse(
            events=[event_pb(c, self.feed.cursors) for c in page.changes],
            next_cursor=self.feed.cursors.encode(page.cursor),
            caught_up=len(page.changes) < size,
        )

    @grpc_errors
    async def GetEventCursors(
        self, request: events_pb2.GetEventCursorsRequest, context: Ctx
    ) -> events_pb2.EventCursors:
        head = await self.repo.head_change_cursor()
        oldest = await self.repo.oldest_change_cursor()
        return events_pb2.EventCursors(head=self.feed.cursors.encode(head), oldest=self.feed.cursors.encode(oldest))


# --- webhook subscriptions -------------------------------------------------------------------


async def _check_url(url: str, *, allow_private: bool) -> None:
    """Syntax, then (unless private targets are allowed) where the URL points, literally and as
    its name resolves now. Raises InvalidRequest; the URL itself is never echoed back."""
    violations = validate_subscription_url("url", url)
    if not violations and not allow_private:
        violations = check_url_target("url", url) or await check_resolved("url", url)
    if violations:
        raise InvalidRequest(violations)


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
    def __init__(
        self,
        repo: ChangeLog,
        store: SubscriptionStore,
        dispatcher: WebhookDispatcher | None,
        cursors: CursorCodec | None = None,
        *,
        allow_private: bool = False,
    ) -> None:
        self.repo = repo
        self.store = store
        self.dispatcher = dispatcher
        self.allow_private = allow_private
        self.cursors = cursors  # the event cursors clients hold (start_cursor)

    async def _owned(self, sub_id: str, field: str = "id") -> SubscriptionRecord:
        sub = await self.store.get_subscription(_check_id(field, sub_id))
        if sub is None or not visible(current_principal.get(), sub):
            raise InvalidRequest([Violation(field, "no such webhook subscription")])
        return sub

    async def _with_stats(
        self, sub: SubscriptionRecord, *, with_secret: bool = False
    ) -> events_pb2.WebhookSubscription:
        stats = (await self.store.stats([sub.id])).get(sub.id)
        return subscription_pb(sub, stats, with_secret=with_secret)

    @grpc_errors
    async def CreateWebhookSubscription(
        self, request: events_pb2.CreateWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        if violations := validate_description("description", request.description):
            raise InvalidRequest(violations)
        _check_lists(request.instance_ids, request.types)
        await _check_url(request.url, allow_private=self.allow_private)
        kinds = _kinds("types", request.types) or []
        instance_ids = creation_filter(request.instance_ids, current_principal.get())
        if request.start_cursor:
            cursor = _decode("start_cursor", request.start_cursor, self.cursors)
            oldest = await self.repo.oldest_change_cursor()
            if cursor < oldest:
                raise InvalidRequest([Violation("start_cursor", "older than the oldest retained event")])
        else:
            cursor = await self.repo.head_change_cursor()
        sub = await self.store.create_subscription(
            f"whsub_{uuid.uuid4().hex}",
            url=request.url.strip(),
            secret=new_secret(),
            event_types=[k.value for k in kinds],
            instance_ids=instance_ids,
            owner=current_principal.get().name,
            description=request.description,
            enabled=not request.disabled,
            cursor=cursor.encode(),
        )
        register_secret(sub.secret)
        return await self._with_stats(sub, with_secret=True)

    @grpc_errors
    async def GetWebhookSubscription(
        self, request: events_pb2.GetWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        return await self._with_stats(await self._owned(request.id))

    @grpc_errors
    async def ListWebhookSubscriptions(
        self, request: events_pb2.ListWebhookSubscriptionsRequest, context: Ctx
    ) -> events_pb2.ListWebhookSubscriptionsResponse:
        principal = current_principal.get()
        subs = [s for s in await self.store.list_subscriptions() if visible(principal, s)]
        stats = await self.store.stats([s.id for s in subs])
        return events_pb2.ListWebhookSubscriptionsResponse(
            subscriptions=[subscription_pb(s, stats.get(s.id)) for s in subs]
        )

    @grpc_errors
    async def UpdateWebhookSubscription(
        self, request: events_pb2.UpdateWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        _check_id("id", request.id)
        _check_lists(request.instance_ids, request.types)
        if request.HasField("description") and (violations := validate_description("description", request.description)):
            raise InvalidRequest(violations)
        changes: dict[str, Any] = {}
        if request.HasField("url"):
            await _check_url(request.url, allow_private=self.allow_private)
            changes["url"] = request.url
        if request.set_types:
            changes["event_types"] = [k.value for k in (_kinds("types", request.types) or [])]
        if request.set_instance_ids:
            changes["instance_ids"] = creation_filter(request.instance_ids, current_principal.get())
        if request.HasField("enabled"):
            changes["enabled"] = request.enabled
        if request.HasField("description"):
            changes["description"] = request.description
        sub = await self._owned(request.id)
        updated = await self.store.update_subscription(sub.id, **changes)
        if updated is None:
            raise InvalidRequest([Violation("id", "no such webhook subscription")])
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return await self._with_stats(updated)

    @grpc_errors
    async def DeleteWebhookSubscription(
        self, request: events_pb2.DeleteWebhookSubscriptionRequest, context: Ctx
    ) -> events_pb2.DeleteWebhookSubscriptionResponse:
        sub = await self._owned(request.id)
        await self.store.delete_subscription(sub.id)
        return events_pb2.DeleteWebhookSubscriptionResponse()

    @grpc_errors
    async def RotateWebhookSecret(
        self, request: events_pb2.RotateWebhookSecretRequest, context: Ctx
    ) -> events_pb2.WebhookSubscription:
        sub = await self._owned(request.id)
        secret = new_secret()
        register_secret(secret)
        updated = await self.store.update_subscription(sub.id, secret=secret)
        assert updated is not None
        return await self._with_stats(updated, with_secret=True)

    @grpc_errors
    async def ListWebhookDeliveries(
        self, request: events_pb2.ListWebhookDeliveriesRequest, context: Ctx
    ) -> events_pb2.ListWebhookDeliveriesResponse:
        _check_id("subscription_id", request.subscription_id)
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
        sub = await self._owned(request.subscription_id, "subscription_id")
        rows = await self.store.list_deliveries(sub.id, states=states or DELIVERY_STATES, limit=size, before_id=before)
        token = str(rows[-1].id) if len(rows) == size else ""
        return events_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(d) for d in rows], next_page_token=token
        )

    @grpc_errors
    async def ReplayWebhookDeliveries(
        self, request: events_pb2.ReplayWebhookDeliveriesRequest, context: Ctx
    ) -> events_pb2.ReplayWebhookDeliveriesResponse:
        _check_id("subscription_id", request.subscription_id)
        if len(request.delivery_ids) > MAX_DELIVERY_IDS:
            got = len(request.delivery_ids)
            raise InvalidRequest([Violation("delivery_ids", f"at most {MAX_DELIVERY_IDS} ids per call (got {got})")])
        if any(i <= 0 for i in request.delivery_ids):
            raise InvalidRequest([Violation("delivery_ids", "delivery ids are positive numbers")])
        sub = await self._owned(request.subscription_id, "subscription_id")
        replayed = await self.store.replay(sub.id, list(request.delivery_ids))
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return events_pb2.ReplayWebhookDeliveriesResponse(replayed=replayed)
