"""The caller's deadline as a context variable: storage work done for a request is bounded by it.

The edges mark a task as serving a request (`request_scope`); the bounded store
(adapters/persistence/bounded.py) reads the deadline to time each call; a use case lifts it for
work that must outlive the call (`beyond_caller`: recording a provider answer already given).
Plain contextvars, no I/O: the use cases may import it (an import-linter contract says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Iterator

# Absolute loop time of the caller's deadline; math.inf: a request without one; None: no request.
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("storage_deadline", default=None)


def current_deadline() -> float | None:
    return _deadline.get()


@contextlib.contextmanager
def request_scope(time_remaining: float | None) -> Iterator[None]:
    """Marks the current task as serving a request (`time_remaining`: the caller's deadline, if any)."""
    loop_time = asyncio.get_running_loop().time()
    token = _deadline.set(float("inf") if time_remaining is None else loop_time + time_remaining)
    try:
        yield
    finally:
        _deadline.reset(token)


def beyond_caller() -> contextvars.Context:
    """A copy of the current context bounded by the configured maximum only, not the caller's
    deadline: for work that must outlive the RPC (recording a provider answer it already gave)."""
    context = contextvars.copy_context()
    context.run(_deadline.set, float("inf"))
    return context
