"""The thin servicer of EventService (proto ↔ domain, scope checks); WebhookSubscriptionService's is
subscription_servicer.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc

from adapters.deadline import request_scope
from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from services.app.events import ChangeFeed, follow
from services.app.principals import PermissionDenied, current_principal
from services.rpc.errors import abort, build_status, grpc_errors, locale_of, status_for
from services.rpc.event_mapping import (
    TYPE_FROM_PB,
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
    ChangeLog,
)
from statemachine.validation import (
    Violation,
    validate_instance_filter,
)

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("wapi_guard.events")
MAX_PAGE = 1000
MAX_BATCH = 500  # events per SubscribeResponse (one tail page)
DEFAULT_PAGE = 100


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


def decode_cursor(field: str, text: str, cursors: CursorCodec | None = None) -> ChangeCursor:
    try:
        return cursors.decode(text) if cursors is not None else ChangeCursor.decode(text)
    except InvalidCursor as error:
        raise InvalidRequest([Violation(field, str(error))]) from None


def change_kinds(field: str, types: Any) -> list[ChangeKind] | None:
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
            kinds = change_kinds("filter.types", request.filter.types)
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
            kinds = change_kinds("filter.types", request.filter.types)
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
