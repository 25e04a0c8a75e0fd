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
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from adapters.runtime import cancel_and_wait
from statemachine.changes import ChangeCursor, ChangeKind, ChangeRecord, CursorCodec
from statemachine.ports import ChangeLog, ChangeWakeups

log = logging.getLogger("wapi_guard.events")


# --- the tail --------------------------------------------------------------------------------


@dataclass(eq=False)
class Listener:
    """One stream attached to the tail: woken whenever the tail moves. It takes what it wants
    from the shared window at its own pace (`ChangeFeed.take`); nothing is pushed to it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)


class ChangeFeed:
    """The process's one tail reader of the change log, and the shared window of the newest
    changes it read (at most `window` of them, for every stream at once)."""

    def __init__(
        self,
        repo: ChangeLog,
        *,
        poll_interval: float = 0.02,
        listen_fallback_interval: float = 1.0,
        wakeups: ChangeWakeups | None = None,
        page_size: int = 500,
        window: int = 5000,
        idle_gather: float = 0.05,
    ) -> None:
        self.repo = repo
        self.poll_interval = poll_interval
        self.listen_fallback_interval = listen_fallback_interval
        self.wakeups = wakeups
        self.page_size = page_size
        self.window_size = max(1, window)
        # With no stream attached, what one read of the log may wait to gather (see _tail).
        self.idle_gather = idle_gather
        self.position = ChangeCursor(0, 0)
        # Every change after `window_start` up to `position` is in `_window` (cursor order);
        # `_keys` holds their cursors, for bisect.
        self.window_start = ChangeCursor(0, 0)
        self._window: list[ChangeRecord] = []
        self._keys: list[ChangeCursor] = []
        self.listeners: set[Listener] = set()
        self.cut_offs = 0  # streams closed as too slow since start (metric, status page)
        # How this log's cursors look to clients (its id and key are read at start).
        self.cursors = CursorCodec(b"\0" * 8, b"")
        self.advanced = asyncio.Event()  # set on every advance; waiters clear their own copy
        self._watchers: set[asyncio.Event] = set()
        self._nudge = asyncio.Event()
        self._listening = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.cursors = CursorCodec.from_hex(*await self.repo.change_log_identity())
        self.position = await self.repo.head_change_cursor()
        self.window_start = self.position
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

    def listen(self) -> Listener:
        listener = Listener()
        self.listeners.add(listener)
        self._nudge.set()  # the tail may have idled: catch up now
        return listener

    def unlisten(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def take(
        self, after: ChangeCursor, accepts: Callable[[ChangeRecord], bool], limit: int
    ) -> tuple[list[ChangeRecord], ChangeCursor] | None:
        """Up to `limit` accepted changes after `after` from the shared window, and the cursor to
        go on from (past the filtered-out ones; the tail's position once the window is read to
        its end). None when `after` is older than the window: the caller reads the log itself."""
        if after < self.window_start:
            return None
        out: list[ChangeRecord] = []
        start = bisect.bisect_right(self._keys, after)
        for index in range(start, len(self._window)):
            change = self._window[index]
            if accepts(change):
                out.append(change)
                if len(out) >= limit:
                    return out, change.cursor
        return out, max(after, self.position)

    def held(self) -> int:
        """Changes held in memory for the streams (at most the window)."""
        return len(self._window)

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
        """Reads every visible change past the tail's position into the window and wakes the
        streams; a burst larger than the window only sends the streams behind it to the log."""
        for _ in range(1000):  # bounded; a round ends once a page is not full
            page = await self.repo.read_changes(self.position, limit=self.page_size)
            for change in page.changes:
                self._window.append(change)
                self._keys.append(change.cursor)
            if len(self._window) > self.window_size:
                cut = len(self._window) - self.window_size
                self.window_start = self._keys[cut - 1]
                del self._window[:cut]
                del self._keys[:cut]
            moved = page.cursor > self.position
            self.position = max(self.position, page.cursor)
            if moved:
                for listener in self.listeners:
                    listener.wake.set()
            if page.changes:
                for watcher in self._watchers:
                    watcher.set()
            if len(page.changes) < self.page_size:
                return


@dataclass(frozen=True, slots=True)
class StreamItem:
    """One change, several consecutive ones (`batch`, when the stream asked for batches), or
    progress (neither); `cursor` is the place to resume after it."""

    change: ChangeRecord | None
    cursor: ChangeCursor
    batch: tuple[ChangeRecord, ...] = ()


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
    page_size: int = 500,
    batch: int = 1,
) -> AsyncIterator[StreamItem]:
    """Every matching change after `start`, in log order, then progress items while idle.

    The stream pulls at its own pace: from the tail's shared window while its cursor is inside
    it, from the log itself (with the filters, a page at a time) while it is behind — after a
    burst larger than the window, or when it starts from an old cursor. Both give the same
    (xid, seq) order below the horizon, so switching has neither a gap nor a repeat, and memory
    per stream is one page: a stream that does not read only stops pulling (the gRPC edge closes
    it as too slow, services/rpc/event_servicers.py). With `batch` > 1 the changes at hand are
    handed over up to `batch` at a time (one item, one gRPC message).
    """
    cursor = start
    accepts = change_filter(instance_ids, kinds)
    listener = feed.listen()
    loop = asyncio.get_running_loop()
    announced = False  # the first progress item says "caught up"
    last_progress = loop.time()
    try:
        while True:
            listener.wake.clear()
            taken = feed.take(cursor, accepts, page_size)
            if taken is None:
                page = await repo.read_changes(cursor, limit=page_size, instance_ids=instance_ids, kinds=kinds)
                changes, upto = page.changes, page.cursor
            else:
                changes, upto = taken
            for first in range(0, len(changes), batch):
                chunk = changes[first : first + batch]
                if batch == 1:
                    yield StreamItem(chunk[0], chunk[0].cursor)
                else:
                    yield StreamItem(None, chunk[-1].cursor, tuple(chunk))
                cursor = chunk[-1].cursor
            cursor = max(cursor, upto)
            if changes:
                last_progress = loop.time()
                continue
            if taken is None:
                if cursor < feed.window_start:  # not expected (the horizon is past the window):
                    await asyncio.sleep(feed.poll_interval)  # never spin on the database
                continue  # read the log up to its horizon; now the window
            now = loop.time()
            if not announced or now - last_progress >= progress_interval:
                announced, last_progress = True, now
                yield StreamItem(None, cursor)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(listener.wake.wait(), progress_interval - (now - last_progress))
    finally:
        feed.unlisten(listener)
