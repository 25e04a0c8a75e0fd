"""Truth out, part two: outbound webhooks, signed per the Standard Webhooks specification.

Two background loops per replica, off every request path: the fan-out turns new change-log
rows into one delivery per matching subscription (moving the subscription's cursor in the same
transaction, compare-and-set, so two replicas never enqueue the same event twice), and the
sender claims due deliveries (SKIP LOCKED + attempt-number claim, see webhook_store.py) and
posts them. Signing is the `standardwebhooks` library's (v1 HMAC-SHA256 over id.timestamp.body).
The body is the same bytes on every attempt; the webhook-id is the event id; the timestamp is
the attempt's own (receivers reject stale timestamps).

Under attack (a receiver that answers slowly, a huge filter, a target on a private network):
- `timeout` bounds a whole attempt (resolve, connect, send, headers, body), and the claim's lease
  is derived from it with margin, so an attempt never outlives its lease: no webhook-id is ever
  in two attempts at once;
- one subscription holds at most its fair share of the sending slots (concurrency ÷ enabled
  subscriptions, at least one), so a slow receiver never delays another's deliveries;
- the fan-out of each subscription is isolated: one that fails never stops the others;
- the receiver's address is resolved and checked at every attempt, and the post goes to the
  checked address (subscriptions.py); a subscription reaches only its creator's scope;
- repeated failures are logged once per interval per subscription, bounded in size, and counted
  in metrics and in the subscription's health.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from adapters.runtime import cancel_and_wait
from services.app.events import ChangeFeed
from services.app.outbound_policy import (
    DEFAULT_SCHEDULE,
    GONE,
    LOG_INTERVAL,
    MAX_LOGGED_ERROR,
    MAX_RETRY_AFTER,
    OUT_OF_SCOPE,
    CheckedBackend,
    OutboundConfig,
    Throttle,
    checked_transport,
    held_back,
    new_secret,
    next_delay,
    parse_schedule,
    retry_after_seconds,
    short_error,
)
from services.app.subscriptions import RefusedTarget, Scopes
from services.observability.logs import register_secret
from services.observability.metrics import Metrics
from statemachine.changes import ChangeCursor, ChangeKind, ChangeRecord, InvalidCursor
from statemachine.ports import ChangeLog, ClaimedAttempt, NewDelivery, SubscriptionRecord, SubscriptionStore
from statemachine.validation import MAX_INSTANCE_IDS

log = logging.getLogger("wapi_guard.outbound")


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
        scopes: Scopes | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.feed = feed
        self.render = render  # the event's JSON form (the body's `data`), from the gRPC edge's schema
        self.config = config or OutboundConfig()
        # Connections for as many attempts as may run at once (the gate bounds them).
        limits = httpx.Limits(
            max_connections=self.config.concurrency, max_keepalive_connections=min(self.config.concurrency, 20)
        )
        if transport is None and not self.config.allow_private:
            transport = checked_transport(limits)
        self._client = httpx.AsyncClient(
            limits=limits,
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
        self.scopes = scopes or Scopes(None)
        self.metrics = metrics
        self.throttle = Throttle()
        # Per subscription: attempts in flight on this replica (fair share of the slots); and the
        # deliveries whose post is open right now (never two posts of one webhook-id: a claim of one
        # of them, which only an expired lease could give, is not started).
        self._busy: dict[str, int] = {}
        self._inflight_ids: set[int] = set()
        self._enabled = 1
        self.attempts = 0
        self.failures = 0
        self.timeouts = 0
        self.refused = 0
        self.fan_out_failures = 0

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
            except Exception as error:
                if (held := self.throttle.allow("fan-out", "*")) is not None:
                    log.warning("webhook fan-out failed: %s%s", short_error(error), held_back(held))

    async def fan_out(self) -> int:
        """Enqueues every new matching event for every enabled subscription; returns how many.
        Each subscription on its own: one that fails is logged (throttled) and skipped."""
        added = 0
        subs = await self.store.list_subscriptions(enabled_only=True)
        self._enabled = max(1, len(subs))
        for sub in subs:
            try:
                added += await self._fan_out_one(sub)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await self._fan_out_failed(sub, error)
        return added

    async def _fan_out_failed(self, sub: SubscriptionRecord, error: Exception) -> None:
        self.fan_out_failures += 1
        if self.metrics is not None:
            self.metrics.webhook_fan_out_failures.add(1, {"subscription": sub.id})
        held = self.throttle.allow("fan-out", sub.id)
        if held is None:
            return
        reason = short_error(error)
        log.warning(
            "webhook fan-out failed for subscription %s (isolated: the others go on): %s%s",
            sub.id,
            reason,
            held_back(held),
            extra={"subscription": sub.id},
        )
        with contextlib.suppress(Exception):
            await self.store.note_error(sub.id, f"fan-out failed: {reason}")

    async def _fan_out_one(self, sub: SubscriptionRecord) -> int:
        try:
            cursor = ChangeCursor.decode(sub.cursor)
        except InvalidCursor:
            raise ValueError("the subscription's cursor is unreadable") from None
        kinds = [ChangeKind(k) for k in sub.event_types] or None
        reach = self.scopes.reach(sub)
        if reach is not None and not reach:
            return 0  # its creator's scope holds none of its instances: it receives nothing
        # A filter past the request bound (stored before it existed) is applied here, not in SQL.
        in_sql = reach if reach is None or len(reach) <= MAX_INSTANCE_IDS else None
        wanted = None if in_sql is not None or reach is None else frozenset(reach)
        added = 0
        expected = sub.cursor
        for _ in range(100):  # bounded per round; the next wake-up continues
            page = await self.repo.read_changes(cursor, limit=200, instance_ids=in_sql, kinds=kinds)
            if page.cursor <= cursor and not page.changes:
                return added
            changes = [c for c in page.changes if wanted is None or c.instance_id in wanted]
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
                for change in changes
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
            except Exception as error:
                if (held := self.throttle.allow("sender", "*")) is not None:
                    log.warning("webhook sender failed: %s%s", short_error(error), held_back(held))
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

    @property
    def share(self) -> int:
        """Slots one subscription may hold: its fair share (at least one)."""
        return max(1, self.config.concurrency // self._enabled)

    async def send_due(self) -> int:
        """Claims what is due (as many as there are free slots, each subscription within its
        share) and starts posting it."""
        free = min(self.config.batch, self._gate._value)
        if free <= 0:
            await self._gate.acquire()  # wait for a slot rather than claim what cannot start
            self._gate.release()
            free = min(self.config.batch, self._gate._value)
        if free <= 0:
            return 0
        share = self.share
        claimed = await self.store.claim_due(
            limit=free, lease=self.config.lease, per_subscription=share, busy=dict(self._busy)
        )
        started = 0
        for attempt in claimed:
            if attempt.delivery_id in self._inflight_ids:
                continue  # its earlier attempt is still open here: never two at once
            if self._busy.get(attempt.subscription_id, 0) >= share:
                continue  # due again after the lease; the share is kept
            await self._gate.acquire()
            self._busy[attempt.subscription_id] = self._busy.get(attempt.subscription_id, 0) + 1
            self._inflight_ids.add(attempt.delivery_id)
            task = asyncio.create_task(self._attempt(attempt))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            started += 1
        return started

    async def _attempt(self, attempt: ClaimedAttempt) -> None:
        try:
            await self.deliver(attempt)
        except Exception as error:
            log.warning("webhook attempt bookkeeping failed: %s", short_error(error))
        finally:
            self._inflight_ids.discard(attempt.delivery_id)  # (also when deliver() failed early)
            left = self._busy.get(attempt.subscription_id, 1) - 1
            if left > 0:
                self._busy[attempt.subscription_id] = left
            else:
                self._busy.pop(attempt.subscription_id, None)
            self._gate.release()
            self._send_wake.set()  # a slot is free: what waited for this share may go now

    def _count(self, kind: str, attempt: ClaimedAttempt, message: str) -> None:
        if kind == "timeout":
            self.timeouts += 1
            if self.metrics is not None:
                self.metrics.webhook_timeouts.add(1, {"subscription": attempt.subscription_id})
        elif kind == "refused":
            self.refused += 1
            if self.metrics is not None:
                self.metrics.webhook_refused.add(1, {"subscription": attempt.subscription_id})
        held = self.throttle.allow(kind, attempt.subscription_id)
        if held is not None:
            log.warning(
                "webhook attempt %s for subscription %s (webhook-id %s): %s%s",
                "timed out" if kind == "timeout" else "refused",
                attempt.subscription_id,
                attempt.event_id,
                message,
                held_back(held),
                extra={"subscription": attempt.subscription_id},
            )

    async def deliver(self, attempt: ClaimedAttempt) -> None:
        register_secret(attempt.secret)
        if attempt.instance_id and not self.scopes.allows(attempt.owner, attempt.instance_id):
            self.failures += 1
            self._count("refused", attempt, OUT_OF_SCOPE)
            await self.store.record_failure(attempt, status_code=0, error=OUT_OF_SCOPE, retry_at=None, kind="refused")
            return
        now = datetime.now(UTC)
        signature = Webhook(attempt.secret).sign(attempt.event_id, now, attempt.body)
        headers = {
            "webhook-id": attempt.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        }
        status, error, retry_after, kind = 0, "", None, ""
        started = time.monotonic()
        self.attempts += 1
        try:
            # One bound for everything: resolving, connecting, sending, the headers and the whole
            # body (httpx's own timeouts are per read: a receiver trickling a byte a second never
            # trips them). The target policy runs when a connection is opened (CheckedBackend).
            try:
                async with asyncio.timeout(self.config.timeout):
                    response = await self._client.post(attempt.url, content=attempt.body.encode(), headers=headers)
            finally:
                # The post is over: recording its outcome makes the delivery due again, and the
                # next claim must not see it as open.
                self._inflight_ids.discard(attempt.delivery_id)
            status = response.status_code
            if 200 <= status < 300:
                await self.store.record_success(attempt, status)
                return
            error = f"HTTP {status}"
            retry_after = retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC))
        except (TimeoutError, httpx.TimeoutException):
            kind = "timeout"
            error = f"timeout after {time.monotonic() - started:.1f}s (limit {self.config.timeout:g}s)"
        except RefusedTarget as refused:
            kind = "refused"
            error = f"refused target: {refused}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: connection failed"
        await self._failed(attempt, status, error, retry_after, kind)

    async def _failed(
        self, attempt: ClaimedAttempt, status: int, error: str, retry_after: float | None, kind: str
    ) -> None:
        """A delivery that did not succeed: counted, then retried on the schedule, or its
        subscription disabled when the receiver says it is gone (410)."""
        self.failures += 1
        if kind:
            self._count(kind, attempt, error)
        if status == GONE:
            # The receiver says it is gone for good: stop sending; the delivery stays pending
            # and goes out if the subscription is enabled again.
            # Disabled first: the delivery, due again once recorded, is not claimed in between.
            await self.store.disable(attempt.subscription_id, "ENDPOINT_GONE", "HTTP 410 Gone")
            await self.store.record_failure(
                attempt, status_code=status, error=error, retry_at=datetime.now(UTC) + timedelta(seconds=0)
            )
            log.warning(
                "webhook subscription disabled: the receiver answered 410",
                extra={"subscription": attempt.subscription_id},
            )
            return
        delay = next_delay(self.config.retry_schedule, attempt.attempt, self.config.jitter, retry_after)
        retry_at = None if delay is None else datetime.now(UTC) + timedelta(seconds=delay)
        await self.store.record_failure(attempt, status_code=status, error=error, retry_at=retry_at, kind=kind)
        if retry_at is not None and delay is not None and delay < self.config.poll_interval:
            loop = asyncio.get_running_loop()
            loop.call_later(delay, self._send_wake.set)


__all__ = [
    "DEFAULT_SCHEDULE",
    "GONE",
    "LOG_INTERVAL",
    "MAX_LOGGED_ERROR",
    "MAX_RETRY_AFTER",
    "OUT_OF_SCOPE",
    "CheckedBackend",
    "OutboundConfig",
    "Throttle",
    "WebhookDispatcher",
    "checked_transport",
    "new_secret",
    "next_delay",
    "parse_schedule",
    "retry_after_seconds",
    "short_error",
]
