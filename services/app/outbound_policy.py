"""Outbound webhooks' policy, apart from the dispatcher (outbound.py re-exports every name):
the retry schedule and its Retry-After reading, the configuration, the logging throttle, and the
transport that checks the receiver's address when it connects (subscriptions.py holds the rule).
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from services.app.subscriptions import RefusedTarget, checked_address

log = logging.getLogger("wapi_guard.outbound")

# Delay before attempt 2, 3, …: roughly exponential, ~27 h in all (the Standard Webhooks / Svix
# practice of retrying over about a day). Each delay gets ±20 % jitter.
DEFAULT_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0)
MAX_RETRY_AFTER = 86400.0
GONE = 410
# A repeated failure of one subscription is logged at most once per this many seconds.
LOG_INTERVAL = 60.0
MAX_LOGGED_ERROR = 300
OUT_OF_SCOPE = "refused: the event's instance is outside the subscription creator's token scope"


def short_error(error: BaseException) -> str:
    """An exception as one bounded line (a failing query with 40,000 parameters is not logged whole)."""
    text = " ".join(str(error).split())
    if len(text) > MAX_LOGGED_ERROR:
        text = text[: MAX_LOGGED_ERROR - 1] + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def held_back(count: int) -> str:
    return f" [{count} more since the last report]" if count else ""


class Throttle:
    """Allows one log line per (kind, key) per interval; counts what it held back."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self.held_back: dict[tuple[str, str], int] = {}

    def allow(self, kind: str, key: str) -> int | None:
        """None: hold this one back. Otherwise how many were held back since the last one logged."""
        now = self.clock()
        last = self._last.get((kind, key))
        if last is not None and now - last < self.interval:
            self.held_back[(kind, key)] = self.held_back.get((kind, key), 0) + 1
            return None
        if len(self._last) > 10_000:  # bounded: forget the oldest keys
            self._last.clear()
        self._last[(kind, key)] = now
        return self.held_back.pop((kind, key), 0)


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def parse_schedule(text: str) -> tuple[float, ...]:
    """'5,30,120' → (5.0, 30.0, 120.0); raises ValueError on anything else."""
    values = tuple(float(part) for part in text.split(",") if part.strip())
    if not values or any(v < 0 or v != v or v > 7 * 86400 for v in values):
        raise ValueError("retry schedule: comma-separated seconds, each 0 … 604800")
    return values


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3); None when absent or junk."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    retry_schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    jitter: float = 0.2
    timeout: float = 10.0
    concurrency: int = 16
    # Seconds between looks for due retries when nothing wakes the sender earlier.
    poll_interval: float = 1.0
    batch: int = 64
    # Receivers on loopback/private/link-local addresses allowed (tests, single-host setups).
    allow_private: bool = False

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and self.timeout == self.timeout):
            raise ValueError("webhook timeout must be a positive number of seconds")
        if self.concurrency < 1:
            raise ValueError("webhook concurrency must be at least 1")
        if self.batch < 1:
            raise ValueError("webhook batch must be at least 1")

    @property
    def lease(self) -> float:
        """How long a claimed delivery is reserved for its attempt: the attempt is cut at `timeout`,
        its outcome is recorded well within the rest, so the lease always outlives the attempt."""
        return 2 * self.timeout + 30.0


def next_delay(schedule: Sequence[float], attempt: int, jitter: float, retry_after: float | None) -> float | None:
    """Delay after failed attempt `attempt` (1-based), or None when the schedule is used up.
    A receiver's Retry-After wins when it asks for longer (capped at a day)."""
    if attempt > len(schedule):
        return None
    base = schedule[attempt - 1]
    delay = base * random.uniform(1 - jitter, 1 + jitter) if jitter else base
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens every receiver connection to an address the target policy checked just before:
    the name is resolved here, each address checked, and the socket connects to that address,
    so what was checked is what is reached (no second lookup to rebind). The URL, the Host
    header, the TLS server name and certificate check keep the name; the pool keys by it."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await checked_address(host, port)
        return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedTarget("unix sockets are not receivers")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def checked_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """httpx's transport with its connection pool on the CheckedBackend (httpx takes no network
    backend argument: the pool it builds is replaced by the same pool with ours)."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=CheckedBackend(),
    )
    return transport
