"""Truth out, part one: the change log as events, one tail reader per process, and the stream.

Modelled on Kubernetes watch / etcd watch (see docs/events.md): every event carries the cursor
right after it; a subscriber catches up from the database and then follows one in-process tail
(the "watch cache"), so a hundred subscribers cost one read per commit, not a hundred. Another
replica's commits are seen through PostgreSQL LISTEN/NOTIFY, used as a wake-up only: the log,
read in commit-safe (xid, seq) order, is the truth, and a fallback poll covers a lost wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format, struct_pb2

from adapters.persistence.changelog import CHANGES_CHANNEL
from adapters.persistence.repository import Repository
from adapters.runtime import cancel_and_wait
from adapters.wapi.webhooks import normalize_inbound
from services.api.wapiguard.v1 import common_pb2, events_pb2
from services.rpc.mapping import ts
from statemachine.changes import ChangeCursor, ChangeKind, ChangeRecord
from statemachine.domain import InstanceState, MessageState

log = logging.getLogger("wapi_guard.events")

TYPE_TO_PB: dict[ChangeKind, int] = {
    ChangeKind.MESSAGE_STATE_CHANGED: events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED,
    ChangeKind.MESSAGE_STUCK: events_pb2.EVENT_TYPE_MESSAGE_STUCK,
    ChangeKind.MESSAGE_FAILED: events_pb2.EVENT_TYPE_MESSAGE_FAILED,
    ChangeKind.INSTANCE_HEALTH_CHANGED: events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED,
    ChangeKind.MESSAGE_RECEIVED: events_pb2.EVENT_TYPE_MESSAGE_RECEIVED,
    ChangeKind.MESSAGE_FROM_PHONE: events_pb2.EVENT_TYPE_MESSAGE_FROM_PHONE,
}
TYPE_FROM_PB: dict[int, ChangeKind] = {v: k for k, v in TYPE_TO_PB.items()}
_MSG_STATE: dict[str, int] = {s.value: common_pb2.MessageState.Value(f"MESSAGE_STATE_{s.value}") for s in MessageState}
_INST_STATE: dict[str, int] = {
    s.value: common_pb2.InstanceState.Value(f"INSTANCE_STATE_{s.value}") for s in InstanceState
}


def _at(value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _state_changed(p: dict[str, Any]) -> events_pb2.MessageStateChanged:
    return events_pb2.MessageStateChanged(
        message_id=_str(p.get("message_id")),
        instance_id=_str(p.get("instance_id")),
        recipient=_str(p.get("recipient")),
        from_state=_MSG_STATE.get(_str(p.get("from_state")), 0),  # type: ignore[arg-type]
        to_state=_MSG_STATE.get(_str(p.get("to_state")), 0),  # type: ignore[arg-type]
        reason=_str(p.get("reason")),
        source=_str(p.get("source")),
        provider_message_id=_str(p.get("provider_message_id")),
        attempt=int(p.get("attempt") or 0),
        version=int(p.get("version") or 0),
        at=_at(p.get("at")),
        created_at=_at(p.get("created_at")),
        sent_at=_at(p.get("sent_at")),
    )


def _inbound(change: ChangeRecord) -> events_pb2.InboundMessage:
    p = change.payload
    body = p.get("body")
    out = events_pb2.InboundMessage(
        instance_id=change.instance_id,
        provider_message_id=_str(p.get("provider_message_id")),
        chat_id=_str(p.get("chat_id")),
        webhook_event_id=_str(p.get("webhook_event_id")),
        connected_phone=_str(p.get("phone")),
        moment=_at(p.get("moment")),
    )
    if isinstance(body, dict):
        raw = struct_pb2.Struct()
        with contextlib.suppress(ValueError, TypeError):
            raw.update(body)
            out.raw.CopyFrom(raw)
        msg = normalize_inbound(body)
        if msg is not None:
            out.provider_message_id = out.provider_message_id or _str(msg.provider_message_id)
            out.chat_id = out.chat_id or _str(msg.chat_id)
            out.sender_id = _str(msg.sender_id)
            out.sender_phone = _str(msg.sender_phone)
            out.push_name = _str(msg.push_name)
            out.kind = msg.kind
            out.text = _str(msg.text)
            out.is_group = msg.is_group
            out.from_me = msg.from_me
            out.reference_message_id = _str(msg.reference_message_id)
            out.connected_phone = out.connected_phone or _str(msg.connected_phone)
            if msg.latitude is not None and math.isfinite(msg.latitude):
                out.latitude = msg.latitude
            if msg.longitude is not None and math.isfinite(msg.longitude):
                out.longitude = msg.longitude
            if msg.media is not None:
                out.media.CopyFrom(
                    events_pb2.MediaReference(
                        url=_str(msg.media.url),
                        mimetype=_str(msg.media.mimetype),
                        file_name=_str(msg.media.file_name),
                        file_length=msg.media.file_length or 0,
                        direct_path=_str(msg.media.direct_path),
                    )
                )
            moment = ts(msg.moment)
            if moment is not None and not out.HasField("moment"):
                out.moment.CopyFrom(moment)
    if not out.kind:
        out.kind = "unknown"
    return out


_EVENT_CACHE: OrderedDict[str, events_pb2.Event] = OrderedDict()
_EVENT_CACHE_SIZE = 4096


def event_pb(change: ChangeRecord) -> events_pb2.Event:
    """One change-log row as the versioned event; built once per change for all subscribers
    (the tail hands the same change to each of them)."""
    cached = _EVENT_CACHE.get(change.event_id)
    if cached is not None:
        return cached
    event = _build_event(change)
    _EVENT_CACHE[change.event_id] = event
    if len(_EVENT_CACHE) > _EVENT_CACHE_SIZE:
        _EVENT_CACHE.popitem(last=False)
    return event


def _build_event(change: ChangeRecord) -> events_pb2.Event:
    p = change.payload
    event = events_pb2.Event(
        id=change.event_id,
        cursor=change.cursor.encode(),
        type=TYPE_TO_PB.get(change.kind, 0),  # type: ignore[arg-type]
        type_name=change.kind.value,
        instance_id=change.instance_id,
        message_id=change.message_id or "",
        occurred_at=ts(change.occurred_at),
    )
    if change.kind is ChangeKind.MESSAGE_STATE_CHANGED:
        event.message_state_changed.CopyFrom(_state_changed(p))
    elif change.kind is ChangeKind.MESSAGE_FAILED:
        event.message_failed.CopyFrom(
            events_pb2.MessageFailed(
                change=_state_changed(p),
                failure_reason=_str(p.get("failure_reason")),
                failure_detail=_str(p.get("failure_detail")),
            )
        )
    elif change.kind is ChangeKind.MESSAGE_STUCK:
        event.message_stuck.CopyFrom(
            events_pb2.MessageStuck(
                message_id=_str(p.get("message_id")),
                instance_id=_str(p.get("instance_id")),
                recipient=_str(p.get("recipient")),
                provider_message_id=_str(p.get("provider_message_id")),
                attempt=int(p.get("attempt") or 0),
                version=int(p.get("version") or 0),
                sent_at=_at(p.get("sent_at")),
                stuck_at=_at(p.get("stuck_at")),
            )
        )
    elif change.kind is ChangeKind.INSTANCE_HEALTH_CHANGED:
        event.instance_health_changed.CopyFrom(
            events_pb2.InstanceHealthChanged(
                instance_id=_str(p.get("instance_id")),
                from_state=_INST_STATE.get(_str(p.get("from_state")), 0),  # type: ignore[arg-type]
                from_reason=_str(p.get("from_reason")),
                to_state=_INST_STATE.get(_str(p.get("to_state")), 0),  # type: ignore[arg-type]
                reason=_str(p.get("reason")),
                phone=_str(p.get("phone")),
                source=_str(p.get("source")),
                at=_at(p.get("at")),
            )
        )
    elif change.kind is ChangeKind.MESSAGE_RECEIVED:
        event.message_received.CopyFrom(_inbound(change))
    elif change.kind is ChangeKind.MESSAGE_FROM_PHONE:
        event.message_from_phone.CopyFrom(_inbound(change))
    return event


def event_dict(change: ChangeRecord) -> dict[str, Any]:
    """The event in proto3 JSON with the .proto field names (the webhook body's `data`)."""
    data: dict[str, Any] = json_format.MessageToDict(event_pb(change), preserving_proto_field_name=True)
    return data


# --- the tail --------------------------------------------------------------------------------


@dataclass(eq=False)
class Listener:
    """One subscriber's bounded queue on the tail. `position`: every change at or before it that
    matches the filter is already in the queue (or was sent)."""

    accepts: Callable[[ChangeRecord], bool]
    queue: asyncio.Queue[ChangeRecord]
    position: ChangeCursor
    overflowed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ChangeFeed:
    """The process's one tail reader of the change log."""

    def __init__(
        self,
        repo: Repository,
        *,
        poll_interval: float = 0.02,
        listen_fallback_interval: float = 1.0,
        listen_dsn: str | None = None,
        page_size: int = 500,
    ) -> None:
        self.repo = repo
        self.poll_interval = poll_interval
        self.listen_fallback_interval = listen_fallback_interval
        self.listen_dsn = listen_dsn
        self.page_size = page_size
        self.position = ChangeCursor(0, 0)
        self.listeners: set[Listener] = set()
        self.advanced = asyncio.Event()  # set on every advance; waiters clear their own copy
        self._watchers: set[asyncio.Event] = set()
        self._nudge = asyncio.Event()
        self._listening = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.position = await self.repo.head_change_cursor()
        self._tasks.append(asyncio.create_task(self._tail(), name="change-tail"))
        if self.listen_dsn:
            self._tasks.append(asyncio.create_task(self._listen(), name="change-listen"))

    async def aclose(self) -> None:
        if stuck := await cancel_and_wait(self._tasks):
            log.warning("change feed: %d background task(s) did not stop", len(stuck))
        self._tasks.clear()

    def nudge(self) -> None:
        self._nudge.set()

    def watch(self) -> asyncio.Event:
        """An event set whenever the tail moves (for the webhook fan-out)."""
        wake = asyncio.Event()
        self._watchers.add(wake)
        return wake

    def listen(self, accepts: Callable[[ChangeRecord], bool], maxsize: int) -> Listener:
        listener = Listener(accepts, asyncio.Queue(maxsize=maxsize), self.position)
        self.listeners.add(listener)
        self._nudge.set()  # the tail may have idled: catch up now
        return listener

    def unlisten(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def _listen(self) -> None:
        """LISTEN on a connection of its own; reconnects with backoff. A wake-up only."""
        import asyncpg

        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self.listen_dsn, timeout=5)
                await conn.add_listener(CHANGES_CHANNEL, lambda *_args: self._nudge.set())
                self._listening = True
                delay = 0.5
                self._nudge.set()  # anything committed while we were not listening
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _conn, done=closed: done.set())
                while not closed.is_set():
                    try:
                        await asyncio.wait_for(closed.wait(), 15.0)
                    except TimeoutError:  # a silently dead socket: find out by asking
                        await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("change LISTEN connection failed: %s", type(error).__name__)
            finally:
                self._listening = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _tail(self) -> None:
        while True:
            # Fast polling only while a stream is attached and no LISTEN wakes us: on SQLite the
            # one connection is shared with the request paths.
            fast = self.listeners and not self._listening
            interval = self.poll_interval if fast else self.listen_fallback_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), interval)
            self._nudge.clear()
            try:
                await self.read_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("change tail read failed", exc_info=True)
                await asyncio.sleep(min(1.0, interval * 4))

    async def read_round(self) -> None:
        """Reads every visible change past the tail's position and hands it to the listeners."""
        for _ in range(1000):  # bounded; a round ends once a page is not full
            page = await self.repo.read_changes(self.position, limit=self.page_size)
            for change in page.changes:
                for listener in list(self.listeners):
                    if listener.overflowed or not listener.accepts(change):
                        continue
                    try:
                        listener.queue.put_nowait(change)
                    except asyncio.QueueFull:
                        listener.overflowed = True  # cut off: it resumes from its own cursor
                    listener.wake.set()
            moved = page.cursor > self.position
            self.position = max(self.position, page.cursor)
            for listener in self.listeners:
                listener.position = max(listener.position, self.position)
                if moved:
                    listener.wake.set()
            if page.changes:
                for watcher in self._watchers:
                    watcher.set()
            if len(page.changes) < self.page_size:
                return


class SlowSubscriber(Exception):
    def __init__(self, cursor: ChangeCursor) -> None:
        super().__init__("subscriber fell behind")
        self.cursor = cursor


@dataclass(frozen=True, slots=True)
class StreamItem:
    change: ChangeRecord | None
    cursor: ChangeCursor


def change_filter(
    instance_ids: Sequence[str] | None, kinds: Sequence[ChangeKind] | None
) -> Callable[[ChangeRecord], bool]:
    ids = frozenset(instance_ids) if instance_ids is not None else None
    wanted = frozenset(kinds) if kinds is not None else None

    def accepts(change: ChangeRecord) -> bool:
        return (ids is None or change.instance_id in ids) and (wanted is None or change.kind in wanted)

    return accepts


async def follow(
    repo: Repository,
    feed: ChangeFeed,
    start: ChangeCursor,
    *,
    instance_ids: Sequence[str] | None,
    kinds: Sequence[ChangeKind] | None,
    progress_interval: float,
    buffer: int,
    page_size: int = 500,
) -> AsyncIterator[StreamItem]:
    """Every matching change after `start`, in log order, then progress items while idle.

    Catch-up reads the database with the filters until it reaches the tail; then it follows the
    tail's queue. The queue is joined before the last catch-up read, and a change it holds at or
    before the subscriber's cursor is dropped, so the hand-over has neither a gap nor a repeat.
    Raises SlowSubscriber (with the last cursor sent) when the queue overflows.
    """
    cursor = start
    listener: Listener | None = None
    joined_at = start
    accepts = change_filter(instance_ids, kinds)
    try:
        for _ in range(1_000_000):  # catch-up: bounded by the log's length
            if listener is None and cursor >= feed.position:
                listener = feed.listen(accepts, buffer)
                joined_at = listener.position
            page = await repo.read_changes(cursor, limit=page_size, instance_ids=instance_ids, kinds=kinds)
            for change in page.changes:
                yield StreamItem(change, change.cursor)
                cursor = change.cursor
            cursor = max(cursor, page.cursor)
            if len(page.changes) < page_size:
                if listener is None:
                    listener = feed.listen(accepts, buffer)
                    joined_at = listener.position
                    continue  # one more read: up to where the tail was when we joined
                if cursor >= joined_at:
                    break  # the queue holds every change after joined_at
                await asyncio.sleep(0.01)
        assert listener is not None
        last_progress = asyncio.get_running_loop().time()
        yield StreamItem(None, cursor)
        while True:
            if listener.overflowed:
                raise SlowSubscriber(cursor)
            while not listener.queue.empty():
                change = listener.queue.get_nowait()
                if change.cursor <= cursor:
                    continue
                yield StreamItem(change, change.cursor)
                cursor = change.cursor
                if listener.overflowed:
                    raise SlowSubscriber(cursor)
            now = asyncio.get_running_loop().time()
            if now - last_progress >= progress_interval:
                cursor = max(cursor, listener.position)
                last_progress = now
                yield StreamItem(None, cursor)
                continue
            listener.wake.clear()
            if listener.queue.empty() and not listener.overflowed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.wake.wait(), progress_interval - (now - last_progress))
    finally:
        if listener is not None:
            feed.unlisten(listener)
