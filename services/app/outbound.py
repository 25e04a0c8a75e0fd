"""Truth out, part two: outbound webhooks, signed per the Standard Webhooks specification.

Two background loops per replica, off every request path: the fan-out turns new change-log
rows into one delivery per matching subscription (moving the subscription's cursor in the same
transaction, compare-and-set, so two replicas never enqueue the same event twice), and the
sender claims due deliveries (SKIP LOCKED + attempt-number claim, see webhook_store.py) and
posts them. Signing is the `standardwebhooks` library's (v1 HMAC-SHA256 over id.timestamp.body).
The body is the same bytes on every attempt; the webhook-id is the event id; the timestamp is
the attempt's own (receivers reject stale timestamps).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from adapters.runtime import cancel_and_wait
from services.app.events import ChangeFeed
from services.observability.logs import register_secret
from statemachine.changes import ChangeCursor, ChangeKind, ChangeRecord, InvalidCursor
from statemachine.ports import ChangeLog, ClaimedAttempt, NewDelivery, SubscriptionRecord, SubscriptionStore

log = logging.getLogger("wapi_guard.outbound")

# Delay before attempt 2, 3, …: roughly exponential, ~27 h in all (the Standard Webhooks / Svix
# practice of retrying over about a day). Each delay gets ±20 % jitter.
DEFAULT_SCHEDULE = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0)
MAX_RETRY_AFTER = 86400.0
GONE = 410


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


class WebhookDispatcher:
    def __init__(
        self,
        repo: ChangeLog,
        store: SubscriptionStore,
        feed: ChangeFeed,
        config: OutboundConfig | None = None,
        *,
        render: Callable[[ChangeRecord], dict[str, Any]],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.feed = feed
        self.render = render  # the event's JSON form (the body's `data`), from the gRPC edge's schema
        self.config = config or OutboundConfig()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.config.timeout),
            follow_redirects=False,
            transport=transport,
            trust_env=False,
            headers={"user-agent": "wapi-guard-webhooks/1", "content-type": "application/json"},
        )
        self._gate = asyncio.Semaphore(self.config.concurrency)
        self._send_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self.attempts = 0
        self.failures = 0

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._fan_out_forever(), name="webhook-fan-out"))
        self._tasks.append(asyncio.create_task(self._send_forever(), name="webhook-sender"))

    async def aclose(self) -> None:
        if stuck := await cancel_and_wait(self._tasks):
            log.warning("webhook dispatcher: %d background task(s) did not stop", len(stuck))
        self._tasks.clear()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.config.timeout)
        await self._client.aclose()

    def wake(self) -> None:
        self._send_wake.set()

    # --- fan-out -----------------------------------------------------------------------------

    async def _fan_out_forever(self) -> None:
        wake = self.feed.watch()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.config.poll_interval)
            wake.clear()
            try:
                if await self.fan_out():
                    self._send_wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook fan-out failed", exc_info=True)

    async def fan_out(self) -> int:
        """Enqueues every new matching event for every enabled subscription; returns how many."""
        added = 0
        for sub in await self.store.list_subscriptions(enabled_only=True):
            added += await self._fan_out_one(sub)
        return added

    async def _fan_out_one(self, sub: SubscriptionRecord) -> int:
        try:
            cursor = ChangeCursor.decode(sub.cursor)
        except InvalidCursor:
            log.error("subscription %s has an unreadable cursor", sub.id)
            return 0
        kinds = [ChangeKind(k) for k in sub.event_types] or None
        instance_ids = sub.instance_ids or None
        added = 0
        expected = sub.cursor
        for _ in range(100):  # bounded per round; the next wake-up continues
            page = await self.repo.read_changes(cursor, limit=200, instance_ids=instance_ids, kinds=kinds)
            if page.cursor <= cursor and not page.changes:
                return added
            deliveries = [
                NewDelivery(
                    event_id=change.event_id,
                    event_type=change.kind.value,
                    instance_id=change.instance_id,
                    occurred_at=change.occurred_at,
                    body=json.dumps(
                        {
                            "type": change.kind.value,
                            "timestamp": change.occurred_at.isoformat(),
                            "data": self.render(change),
                        },
                        separators=(",", ":"),
                        ensure_ascii=False,
                    ),
                )
                for change in page.changes
            ]
            new_cursor = page.cursor.encode()
            if not await self.store.enqueue(
                sub.id, expected_cursor=expected, new_cursor=new_cursor, deliveries=deliveries
            ):
                return added  # another replica moved it: it enqueued these
            added += len(deliveries)
            cursor, expected = page.cursor, new_cursor
            if len(page.changes) < 200:
                return added
        return added

    # --- sending -----------------------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            try:
                claimed = await self.send_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("webhook sender failed", exc_info=True)
                claimed = 0
            if claimed:
                continue
            timeout = self.config.poll_interval
            with contextlib.suppress(Exception):
                due = await self.store.next_due_at()
                if due is not None:
                    timeout = max(0.0, min(timeout, (due - datetime.now(UTC)).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_wake.wait(), timeout)
            self._send_wake.clear()

    async def send_due(self) -> int:
        """Claims what is due (as many as there are free slots) and starts posting it."""
        free = max(1, min(self.config.batch, self._gate._value))
        lease = self.config.timeout + 30.0
        claimed = await self.store.claim_due(limit=free, lease=lease)
        for attempt in claimed:
            await self._gate.acquire()
            task = asyncio.create_task(self._attempt(attempt))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _attempt(self, attempt: ClaimedAttempt) -> None:
        try:
            await self.deliver(attempt)
        except Exception:
            log.warning("webhook attempt bookkeeping failed", exc_info=True)
        finally:
            self._gate.release()

    async def deliver(self, attempt: ClaimedAttempt) -> None:
        register_secret(attempt.secret)
        now = datetime.now(UTC)
        signature = Webhook(attempt.secret).sign(attempt.event_id, now, attempt.body)
        headers = {
            "webhook-id": attempt.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        status, error, retry_after = 0, "", None
        started = time.monotonic()
        self.attempts += 1
        try:
            response = await self._client.post(attempt.url, content=attempt.body.encode(), headers=headers)
            status = response.status_code
            if 200 <= status < 300:
                await self.store.record_success(attempt, status)
                return
            error = f"HTTP {status}"
            retry_after = retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC))
        except httpx.TimeoutException:
            error = f"timeout after {time.monotonic() - started:.1f}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: connection failed"
        self.failures += 1
        if status == GONE:
            # The receiver says it is gone for good: stop sending; the delivery stays pending
            # and goes out if the subscription is enabled again.
            await self.store.record_failure(
                attempt, status_code=status, error=error, retry_at=datetime.now(UTC) + timedelta(seconds=0)
            )
            await self.store.disable(attempt.subscription_id, "ENDPOINT_GONE", "HTTP 410 Gone")
            log.warning(
                "webhook subscription disabled: the receiver answered 410",
                extra={"subscription": attempt.subscription_id},
            )
            return
        delay = next_delay(self.config.retry_schedule, attempt.attempt, self.config.jitter, retry_after)
        retry_at = None if delay is None else datetime.now(UTC) + timedelta(seconds=delay)
        await self.store.record_failure(attempt, status_code=status, error=error, retry_at=retry_at)
        if retry_at is not None and delay is not None and delay < self.config.poll_interval:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self._send_wake.set)
