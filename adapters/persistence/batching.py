"""Plumbing: the group-commit batcher every batched write (message inserts, SENT, statuses) uses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

T = TypeVar("T")


R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Group commit: items submitted while a batch is being written go out together in the next.

    Alone, an item costs exactly one statement (no timer, no added latency). Under load (items
    arrived while a batch was in flight) the next batch waits `window` seconds to gather more:
    on a CPU-bound server the database answers faster than requests arrive, so without the
    window batches stay at ~2 items and each item pays a round-trip's CPU (benchmark:
    a 5 ms window cut the blocked send's server CPU ~10% and Postgres' CPU by half).
    When a batch fails for one item's sake (bad data, constraint) or a lock conflict, its items
    are retried one by one so they cannot fail each other; when the database itself fails,
    every item gets that error.
    """

    MAX_BATCH = 200

    def __init__(
        self,
        write_batch: Callable[[list[T]], Awaitable[list[R]]],
        write_one: Callable[[T], Awaitable[R]],
        *,
        window: float = 0.0,
    ) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._window = window
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._draining = False

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._draining:
            self._draining = True
            task = asyncio.create_task(self._drain())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await future

    async def _fill(self) -> None:
        """Under load: wait while the batch keeps growing, at most `window` seconds. Stops as soon
        as a step brings nothing new (every caller may be waiting on this very batch)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._window
        step = self._window / 5
        while len(self._pending) < self.MAX_BATCH and loop.time() < deadline:
            before = len(self._pending)
            await asyncio.sleep(step)
            if len(self._pending) == before:
                return

    async def _drain(self) -> None:
        try:
            first = True
            while self._pending:
                if not first and self._window > 0:
                    await self._fill()
                first = False
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                try:
                    results = await self._write_batch([item for item, _ in batch])
                    for (_, future), value in zip(batch, results, strict=True):
                        _settle(future, value)
                except DBAPIError as error:
                    if not _row_specific(error) or len(batch) == 1:
                        for _item, future in batch:
                            _fail(future, error)
                        continue
                    for item, future in batch:
                        try:
                            _settle(future, await self._write_one(item))
                        except Exception as item_error:
                            _fail(future, item_error)
                except Exception as error:
                    for _item, future in batch:
                        _fail(future, error)
        finally:
            self._draining = False


def _row_specific(error: DBAPIError) -> bool:
    """SQLSTATE 22 (data exception), 23 (integrity) or 40 (deadlock/serialization): retrying the
    items one by one can succeed; anything else means the database itself is in trouble."""
    if isinstance(error, (DataError, IntegrityError)):
        return True
    sqlstate = str(getattr(error.orig, "sqlstate", "") or getattr(error.orig, "pgcode", "") or "")
    return sqlstate[:2] in ("22", "23", "40")


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: BaseException | None) -> None:
    if not future.done():
        future.set_exception(error or RuntimeError("insert failed"))
