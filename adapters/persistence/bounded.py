"""A request's storage work is bounded: a database that stops answering costs a caller seconds, not its deadline.

The driver-level timeouts (connect, pool checkout, asyncpg `command_timeout`, server-side
`statement_timeout`) bound each step, but a unit of work is several steps, and a cancelled
statement's cleanup (rollback, closing the connection) can itself wait on the dead connection.
So each store call made while serving a request gets a timer: when the budget is over the call
is cancelled, and cancelled again until it gives up (SQLAlchemy shields its connection close,
which then finishes in the background, bounded by the driver timeouts); the caller answers
`StorageTimeout` (UNAVAILABLE/STORAGE_UNAVAILABLE) at once. No task per call: a timer is cheap on
the hot path (~7-12 µs of CPU per call, measured), a task and its extra loop iteration were not
(~80 µs per call).

The budget is `request_timeout` (a configured maximum, also the one for HTTP webhook posts),
and within a gRPC call at most 40 % of the caller's remaining deadline, so the answer arrives
well before the caller gives up. Outside a request (background loops) nothing is added.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any

from adapters.deadline import current_deadline

MIN_BUDGET = 0.05
# Of the caller's remaining deadline, what one storage call may use: the rest is left for the
# provider call, recording its answer and the reply.
DEADLINE_SHARE = 0.4
RECANCEL = 0.05


class StorageTimeout(TimeoutError):
    """The database did not answer a request's unit of work within its budget."""

    def __init__(self, operation: str, budget: float) -> None:
        super().__init__(f"database did not answer {operation} within {budget:.2f}s")
        self.operation = operation
        self.budget = budget


class BoundedStore:
    """Wraps a store: its coroutine methods, called inside a request scope, are bounded."""

    def __init__(self, store: Any, request_timeout: float) -> None:
        self._store = store
        self._timeout = request_timeout

    @property
    def inner(self) -> Any:
        return self._store

    def budget(self) -> float | None:
        deadline = current_deadline()
        if deadline is None:
            return None
        left = deadline - asyncio.get_running_loop().time()
        return max(MIN_BUDGET, min(self._timeout, left * DEADLINE_SHARE))

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        bounded = functools.partial(self._call, name, attribute)
        self.__dict__[name] = bounded  # found directly from now on
        return bounded

    async def _call(self, name: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        budget = self.budget()
        if budget is None:
            return await method(*args, **kwargs)
        task = asyncio.current_task()
        assert task is not None
        expiry = _Expiry(task)
        expiry.handle = asyncio.get_running_loop().call_later(budget, expiry.fire)
        try:
            result = await method(*args, **kwargs)
        except asyncio.CancelledError:
            # Ours, and nobody else cancelled this task meanwhile (the caller going away wins).
            if expiry.stop() or task.cancelling():
                raise
        except BaseException:
            expiry.stop()
            raise
        else:
            expiry.stop()
            return result
        raise StorageTimeout(name, budget)


class _Expiry:
    """Cancels the task when the budget is over, and again every RECANCEL seconds until the call
    gives up: the first cancel interrupts the statement, a later one the cleanup that waits on
    the same dead connection (SQLAlchemy shields its close, which then finishes in the
    background). Costs one timer per call; no task, no extra loop iteration."""

    __slots__ = ("done", "fired", "handle", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.fired = 0
        self.handle: asyncio.TimerHandle | None = None
        self.done = False

    def fire(self) -> None:
        if self.done:
            return
        self.fired += 1
        self.task.cancel()
        self.handle = asyncio.get_running_loop().call_later(RECANCEL, self.fire)

    def stop(self) -> bool:
        """Ends the timer and withdraws our cancels; True when it never fired."""
        self.done = True
        if self.handle is not None:
            self.handle.cancel()
        for _ in range(self.fired):  # our cancels only: one from elsewhere still counts
            self.task.uncancel()
        return not self.fired
