"""Truth out, part one: the change log as events, one tail reader per process, and the stream.

Modelled on Kubernetes watch / etcd watch (see docs/events.md): every event carries the cursor
right after it; a subscriber catches up from the database and then follows one in-process tail
(the "watch cache"), so a hundred subscribers cost one read per commit, not a hundred. Another
replica's commits are seen through PostgreSQL LISTEN/NOTIFY (adapters/persistence/listen.py, handed
in by the composition root as `wakeups`), used as a wake-up only: the log, read in commit-safe
(xid, seq) order, is the truth, and a fallback poll covers a lost wake-up. The rows become
protobuf Events at the gRPC edge (services/rpc/event_mapping.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from adapters.runtime import cancel_and_wait
from statemachine.changes import ChangeCursor, ChangeKind, ChangeRecord
from statemachine.ports import ChangeLog, ChangeWakeups

log = logging.getLogger("wapi_guard.events")


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
        repo: ChangeLog,
        *,
        poll_interval: float = 0.02,
        listen_fallback_interval: float = 1.0,
        wakeups: ChangeWakeups | None = None,
        page_size: int = 500,
        idle_gather: float = 0.05,
    ) -> None:
        self.repo = repo
        self.poll_interval = poll_interval
        self.listen_fallback_interval = listen_fallback_interval
        self.wakeups = wakeups
        self.page_size = page_size
        # With no stream attached, what one read of the log may wait to gather (see _tail).
        self.idle_gather = idle_gather
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
        if self.wakeups is not None:
            self._tasks.append(
                asyncio.create_task(self.wakeups(self._nudge.set, self._set_listening), name="change-listen")
            )

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

    def _set_listening(self, listening: bool) -> None:
        self._listening = listening

    async def _tail(self) -> None:
        while True:
            # Fast polling only while a stream is attached and no LISTEN wakes us: on SQLite the
            # one connection is shared with the request paths.
            fast = self.listeners and not self._listening
            interval = self.poll_interval if fast else self.listen_fallback_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), interval)
            if not self.listeners and self.idle_gather > 0:
                # No stream attached: only the outbound fan-out follows the tail, to which a few
                # milliseconds do not matter. Under load every group commit NOTIFYs; one read per
                # window instead of one per commit (with the fan-out's subscription lookup behind
                # it) was ~10 % of a blocked send's server CPU (docs/performance.md).
                await asyncio.sleep(self.idle_gather)
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
    repo: ChangeLog,
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
