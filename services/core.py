"""The application core: one place where the delivery-truth rules meet the adapters.

Servicers call this; it calls the pure rules (statemachine) and the ports (provider,
repository). The send preflight reads stored health through a small cache: no provider
round-trip on the send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from sqlalchemy.exc import DBAPIError

from adapters.persistence.bounded import beyond_caller
from adapters.wapi.webhooks import parse_webhook
from services.content import content_to_dict, outbound_from_stored, request_hash
from services.logs import register_secret
from services.runtime import cancel_and_wait
from services.stall_watch import StallWatch
from services.telemetry import Telemetry, current_trace_ids, use_span
from statemachine.detection import DetectionConfig, ProbePolicy
from statemachine.domain import (
    Credentials,
    InstanceRecord,
    InstanceState,
    MessageRecord,
    MessageState,
    OutboundMessage,
    Plan,
    Reason,
    SendOutcome,
    StateChange,
)
from statemachine.errors import (
    IdempotencyConflict,
    InstanceNotFound,
    InvalidPayload,
    InvalidRequest,
    MessageNotFound,
    NotRetryable,
    OutcomeUnknown,
    ProviderFailed,
    SendBlocked,
    SendInProgress,
)
from statemachine.events import EventReason, Route
from statemachine.ids import time_ordered_id
from statemachine.machines import InstanceTrigger, probe_trigger
from statemachine.ports import (
    ConcurrentUpdateError,
    IngestResult,
    InstanceChange,
    MessageChange,
    Provider,
    PruneReport,
    RetentionPolicy,
    Store,
)
from statemachine.preflight import block_reason
from statemachine.validation import (
    SendRequest,
    Violation,
    normalize_recipient,
    validate_instance_id,
    validate_send,
)

log = logging.getLogger("wapi_guard.core")


def utcnow() -> datetime:
    return datetime.now(UTC)


# Provider outcomes that say "the provider/gateway is in trouble", not "this message is bad".
GATEWAY_FAILURES = frozenset({Reason.PROVIDER_UNAVAILABLE, Reason.PROVIDER_TIMEOUT})
PREFLIGHT_REASONS = frozenset(
    {
        Reason.SESSION_INCOMPLETE,
        Reason.TIMEOUT_OR_GATEWAY,
        Reason.INSTANCE_DISCONNECTED,
        Reason.HEALTH_UNKNOWN,
        Reason.TOKEN_INVALID,
        Reason.INSTANCE_NOT_FOUND,
        Reason.DELIVERY_STALLED,
        Reason.NOT_SUPPORTED_BY_PLAN,
        Reason.RESTARTING,
        Reason.PAIRING_IN_PROGRESS,
    }
)
# A send's answer that says something about the instance itself.
SEND_FAILURE_TRIGGERS = {
    Reason.TOKEN_INVALID: InstanceTrigger.REPORT_TOKEN_INVALID,
    Reason.INSTANCE_NOT_FOUND: InstanceTrigger.REPORT_NOT_FOUND,
}
RECORD_ATTEMPTS = 8  # ~10 s of backoff to store an answer the provider already gave
# Headers never stored with a raw event.
SECRET_HEADERS = ("authorization", "cookie", "x-webhook-secret", "x-api-key", "proxy-authorization")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    send_timeout: float = 15.0
    probe_timeout: float = 10.0
    # Upper bound on how stale another replica's view of an instance can be in the preflight.
    health_cache_ttl: float = 2.0
    # Change-feed poll: also how fast a change made by another replica reaches watchers/caches.
    change_poll_interval: float = 0.5
    gateway_failure_threshold: int = 3
    probe_interval: float = 60.0
    probe_concurrency: int = 16
    touch_flush_interval: float = 1.0
    # A message SENT for longer than this without DELIVERED/READ is stuck (operational alert).
    stuck_after: float = 300.0
    # This many stuck messages in a row, with no delivery between them: DEGRADED/DELIVERY_STALLED.
    stall_threshold: int = 3
    sweep_interval: float = 15.0
    # The learned stall test (statemachine.detection): its size per instance-day, how often the
    # sending instances are assessed (0 disables it), and how fresh their probed health is kept.
    stall_false_alarm_per_day: float = 1e-4
    detect_interval: float = 1.0
    active_probe_max_age: float = 3.0
    # PENDING longer than this (well past any send timeout) means a crash mid-send: OUTCOME_UNKNOWN.
    pending_grace: float = 60.0
    # Seconds between retention runs (0: never prune); what each table keeps.
    retention_interval: float = 3600.0
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    """One item of WatchInstances: current health plus the change (None for the snapshot)."""

    instance: InstanceRecord
    change: StateChange | None


@dataclass(slots=True)
class _Cached:
    record: InstanceRecord
    token: str = field(repr=False)
    expires: float


class Gateway:
    def __init__(
        self,
        repo: Store,
        provider: Provider,
        config: GatewayConfig | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.repo = repo
        self.provider = provider
        self.config = config or GatewayConfig()
        self.telemetry = telemetry or Telemetry({})
        self.tracer = self.telemetry.tracer
        self.metrics = self.telemetry.metrics
        self._gauge_stuck: dict[str, int] = {}
        self._gauge_states: dict[str, int] = {}
        self.metrics.gauges["stuck"] = lambda: [(v, {"instance_id": k}) for k, v in self._gauge_stuck.items()]
        self.metrics.gauges["instances"] = lambda: [(v, {"state": k}) for k, v in self._gauge_states.items()]
        self._cache: dict[str, _Cached] = {}
        self._subscribers: set[asyncio.Queue[InstanceEvent]] = set()
        self._feed_nudge = asyncio.Event()
        self._last_change_id = 0
        self._touched: dict[str, datetime] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[MessageRecord]] = set()
        self._probe_gate = asyncio.Semaphore(self.config.probe_concurrency)
        # Called (not awaited) with the instance id when it becomes CONNECTED again from another
        # state: the recovery side re-applies W-API's webhooks then.
        self.on_reconnected: Callable[[str], None] | None = None
        self.stall_watch = StallWatch(
            repo,
            probe=lambda instance_id: self.probe(instance_id, source="probe"),
            apply_change=self._after_instance_change,
            config=DetectionConfig(false_alarm_per_day=self.config.stall_false_alarm_per_day),
            policy=ProbePolicy(active_max_age=self.config.active_probe_max_age),
            interval=self.config.detect_interval or 1.0,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, background_probes: bool = True) -> None:
        self._last_change_id = await self.repo.last_instance_change_id()
        await self.refresh_gauges()
        self._tasks.append(asyncio.create_task(self._tail_changes(), name="change-feed"))
        self._tasks.append(asyncio.create_task(self._flush_touches(), name="touch-flusher"))
        if background_probes and self.config.probe_interval > 0:
            self._tasks.append(asyncio.create_task(self._probe_forever(), name="prober"))
        if self.config.sweep_interval > 0:
            self._tasks.append(asyncio.create_task(self._sweep_forever(), name="stuck-sweeper"))
        if self.config.detect_interval > 0:
            self._tasks.append(asyncio.create_task(self.stall_watch.run(), name="stall-watch"))
        if self.config.retention_interval > 0:
            self._tasks.append(asyncio.create_task(self._prune_forever(), name="retention"))

    async def aclose(self) -> None:
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self.config.send_timeout)
        if stuck := await cancel_and_wait(self._tasks):
            log.warning("gateway: %d background task(s) did not stop", len(stuck))
        self._tasks.clear()
        await self.stall_watch.aclose()
        with contextlib.suppress(Exception):
            await self.repo.touch_instances(self._touched)
        await self.repo.aclose()

    # --- instance health ---------------------------------------------------------------------

    async def _instance(self, instance_id: str) -> _Cached | None:
        cached = self._cache.get(instance_id)
        now = time.monotonic()
        if cached is not None and cached.expires > now:
            return cached
        found = await self.repo.get_instance(instance_id)
        if found is None:
            self._cache.pop(instance_id, None)
            return None
        register_secret(found[1])
        cached = _Cached(found[0], found[1], now + self.config.health_cache_ttl)
        self._cache[instance_id] = cached
        return cached

    def _remember(self, record: InstanceRecord) -> None:
        cached = self._cache.get(record.instance_id)
        if cached is not None:
            cached.record = record
            cached.expires = time.monotonic() + self.config.health_cache_ttl

    def _after_instance_change(self, change: InstanceChange | None) -> None:
        if change is None:
            return
        self._remember(change.instance)
        if change.decision.changed:
            attributes = {
                "wapi.instance_id": change.instance.instance_id,
                "from": change.decision.from_state.value,
                "to": change.decision.to_state.value,
                "reason": change.decision.reason,
                "source": change.source,
            }
            trace.get_current_span().add_event("instance.state_change", attributes)
            self.metrics.state_changes.add(
                1, {"to": change.decision.to_state.value, "reason": change.decision.reason, "source": change.source}
            )
            log.info(
                "instance state changed",
                extra={
                    "instance_id": change.instance.instance_id,
                    "from": change.decision.from_state.value,
                    "to": change.decision.to_state.value,
                    "reason": change.decision.reason,
                    "source": change.source,
                },
            )
            self._feed_nudge.set()
            if (
                change.decision.to_state is InstanceState.CONNECTED
                and change.decision.from_state is not InstanceState.CONNECTED
                and self.on_reconnected is not None
            ):
                self.on_reconnected(change.instance.instance_id)

    async def register(
        self, instance_id: str, name: str, token: str, plan: Plan, *, probe: bool = True
    ) -> InstanceRecord:
        violations = validate_instance_id(instance_id)
        if len(name) > 200:
            violations.append(Violation("name", "longer than 200 characters"))
        if len(token) > 512:
            violations.append(Violation("token", "longer than 512 characters"))
        if violations:
            raise InvalidRequest(violations)
        register_secret(token)
        try:
            record, _created = await self.repo.upsert_instance(instance_id, name, token or None, plan)
        except ValueError:
            raise InvalidRequest([Violation("token", "required on first registration")]) from None
        self._cache.pop(instance_id, None)
        if probe:
            return await self.probe(instance_id, source="registration")
        return await self._with_stuck(record)

    async def remove(self, instance_id: str) -> bool:
        violations = validate_instance_id(instance_id)
        if violations:
            raise InvalidRequest(violations)
        removed = await self.repo.delete_instance(instance_id)
        if not removed:
            raise InstanceNotFound(instance_id)
        self._cache.pop(instance_id, None)
        await self.refresh_gauges()
        return removed

    async def probe(self, instance_id: str, *, source: str = "probe") -> InstanceRecord:
        """Asks the provider now and runs the answer through the instance machine."""
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        _record, token = found
        register_secret(token)
        async with self._probe_gate:
            outcome = await self.provider.probe(Credentials(instance_id, token), timeout=self.config.probe_timeout)
        change = await self.repo.apply_instance_trigger(
            instance_id, probe_trigger(outcome), source=source, new_phone=outcome.phone, checked_at=utcnow()
        )
        if change is None:
            raise InstanceNotFound(instance_id)
        self._after_instance_change(change)
        return await self._with_stuck(change.instance)

    async def health(self, instance_id: str, *, refresh: bool = False) -> InstanceRecord:
        violations = validate_instance_id(instance_id)
        if violations:
            raise InvalidRequest(violations)
        if refresh:
            return await self.probe(instance_id, source="probe")
        found = await self.repo.get_instance(instance_id)
        if found is None:
            raise InstanceNotFound(instance_id)
        return await self._with_stuck(found[0])

    async def _with_stuck(self, record: InstanceRecord) -> InstanceRecord:
        counts = await self.repo.stuck_counts([record.instance_id])
        return replace(record, stuck_messages=counts.get(record.instance_id, 0))

    async def list_instances(
        self, *, refresh: bool = False, states: Sequence[InstanceState] = ()
    ) -> list[InstanceRecord]:
        if refresh:
            await self.probe_all()
        records = await self.repo.list_instances(states)
        counts = await self.repo.stuck_counts()
        return [replace(r, stuck_messages=counts.get(r.instance_id, 0)) for r in records]

    async def probe_all(self) -> dict[str, InstanceState]:
        """Probes every instance concurrently, bounded by the probe gate, each with its own timeout."""
        ids = [instance_id for instance_id, _ in await self.repo.list_credentials()]

        async def one(instance_id: str) -> tuple[str, InstanceState]:
            try:
                return instance_id, (await self.probe(instance_id)).state
            except InstanceNotFound:
                return instance_id, InstanceState.UNKNOWN

        results = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
        out: dict[str, InstanceState] = {}
        for item in results:
            if isinstance(item, BaseException):
                log.warning("probe failed: %s", type(item).__name__)
            else:
                out[item[0]] = item[1]
        return out

    async def _probe_forever(self) -> None:
        interval = self.config.probe_interval
        while True:
            # Jitter so N replicas (and N instances) do not probe W-API in lock-step.
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.probe_all()
            except Exception:
                log.exception("background probe round failed")

    async def subscribe(
        self, instance_ids: Sequence[str] = (), *, include_current: bool = False
    ) -> AsyncIterator[InstanceEvent]:
        queue: asyncio.Queue[InstanceEvent] = asyncio.Queue(maxsize=1000)
        self._subscribers.add(queue)
        wanted = set(instance_ids)
        try:
            if include_current:
                for record in await self.list_instances():
                    if not wanted or record.instance_id in wanted:
                        yield InstanceEvent(record, None)
            while True:
                item = await queue.get()
                if not wanted or item.instance.instance_id in wanted:
                    yield item
        finally:
            self._subscribers.discard(queue)

    async def _tail_changes(self) -> None:
        """Publishes every instance change committed by any replica, in commit-id order."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._feed_nudge.wait(), self.config.change_poll_interval)
            self._feed_nudge.clear()
            try:
                changes = await self.repo.instance_changes_since(self._last_change_id)
            except Exception:
                log.warning("change feed poll failed", exc_info=True)
                continue
            if changes:
                with contextlib.suppress(Exception):
                    await self.refresh_gauges()
            for change_id, instance_id, change in changes:
                self._last_change_id = change_id
                self._cache.pop(instance_id, None)  # another replica may have made it
                if not self._subscribers:
                    continue
                found = await self.repo.get_instance(instance_id)
                if found is None:
                    continue
                record = await self._with_stuck(found[0])
                for queue in list(self._subscribers):
                    if queue.full():
                        queue.get_nowait()  # a slow watcher loses the oldest, never blocks the feed
                    queue.put_nowait(InstanceEvent(record, change))

    # --- sends -------------------------------------------------------------------------------

    async def send(self, req: SendRequest, *, time_remaining: float | None = None) -> MessageRecord:
        """`time_remaining` is the caller's gRPC deadline budget: the provider call never outlives it."""
        req = replace(req, to=normalize_recipient(req.to))
        violations = validate_send(req)
        if violations:
            raise InvalidRequest(violations)
        assert req.kind is not None
        assert req.content is not None
        span = self.tracer.start_span(
            "wapi.send_attempt",
            attributes={"wapi.instance_id": req.instance_id, "wapi.attempt": 1, "wapi.kind": req.kind.value},
        )
        with use_span(span, end_on_exit=False):
            try:
                with self.tracer.start_as_current_span("wapi.preflight") as preflight:
                    cached = await self._instance(req.instance_id)
                    if cached is None:
                        raise InstanceNotFound(req.instance_id)
                    health = cached.record
                    blocked = block_reason(health.state, health.reason, health.plan, req.kind)
                    preflight.set_attribute("wapi.session_health", health.state.value)
                span.set_attribute("wapi.session_health", health.state.value)
                outbound = OutboundMessage(req.kind, req.to, req.content, req.reply_to, req.delay_seconds)
                msg = self._new_message(req, outbound, blocked, health)
                span.set_attribute("wapi.message_id", msg.id)
                with self.tracer.start_as_current_span("wapi.persist", attributes={"db.operation": "insert"}):
                    stored, created = await self.repo.insert_message(msg)
                if not created:
                    span.set_attribute("wapi.idempotent_replay", True)
                    span.set_attribute("wapi.message_id", stored.id)
                    self.metrics.sends.add(1, {"outcome": "replayed", "reason": stored.failure_reason})
                    return await self._replay(stored, msg.request_hash)
                if blocked:
                    self._log_attempt(stored, health.state, blocked.value, "blocked")
                    self.metrics.sends.add(1, {"outcome": "blocked", "reason": blocked.value})
                    self.metrics.blocked.add(1, {"reason": blocked.value})
                    raise SendBlocked(blocked, stored, health.state)
            except BaseException as error:
                _end_with_error(span, error)
                raise
        return await self._attempt_shielded(stored, outbound, cached, span, self._budget(time_remaining))

    def _budget(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self.config.send_timeout
        # Leave a little of the caller's deadline to record the outcome and answer.
        return max(0.05, min(self.config.send_timeout, time_remaining * 0.9 - 0.05))

    def _new_message(
        self, req: SendRequest, outbound: OutboundMessage, blocked: Reason | None, health: InstanceRecord
    ) -> MessageRecord:
        now = utcnow()
        content = content_to_dict(outbound)
        initial = MessageState.FAILED if blocked else MessageState.PENDING
        trace_id, span_id = current_trace_ids()
        return MessageRecord(
            id=time_ordered_id(),
            instance_id=req.instance_id,
            to=req.to,
            kind=outbound.kind,
            state=initial,
            failure_reason=blocked.value if blocked else "",
            failure_detail=f"instance {health.state.value}" if blocked else "",
            provider_message_id=None,
            attempts=1,
            idempotency_key=req.idempotency_key or f"auto:{uuid.uuid4()}",
            request_hash=request_hash(outbound, content),
            content=content,
            created_at=now,
            updated_at=now,
            sent_at=None,
            stuck_at=None,
            history=[StateChange("", initial, blocked or Reason.CREATED, "preflight" if blocked else "send", now)],
            version=1,
            trace_id=trace_id,
            span_id=span_id,
        )

    def _log_attempt(self, msg: MessageRecord, health: InstanceState, blocked_reason: str, outcome: str) -> None:
        log.info(
            "send attempt",
            extra={
                "instance_id": msg.instance_id,
                "attempt": msg.attempts,
                "message_id": msg.id,
                "session_health": health.value,
                "blocked_reason": blocked_reason,
                "outcome": outcome,
                "failure_reason": msg.failure_reason,
                "provider_message_id": msg.provider_message_id or "",
            },
        )

    async def _replay(self, stored: MessageRecord, wanted_hash: str) -> MessageRecord:
        """Same key again: the first request's outcome, never a second provider call."""
        if stored.request_hash != wanted_hash:
            raise IdempotencyConflict(stored)
        if stored.state is MessageState.PENDING:
            stored = await self._pending_replay(stored)
        if stored.state is MessageState.FAILED:
            raise self._failure_error(stored)
        return stored

    async def _pending_replay(self, stored: MessageRecord) -> MessageRecord:
        """The key is held by an attempt with no recorded answer. While that attempt may still be
        running (younger than the reconciler's grace), the caller is told to come back; past it the
        attempt is dead, so the message is settled now (FAILED/OUTCOME_UNKNOWN, as the sweeper
        would) and the caller gets that verdict with the way out (`RetryMessage`)."""
        grace = self._pending_cutoff_seconds()
        left = grace - (utcnow() - stored.updated_at).total_seconds()
        if left > 0:
            raise SendInProgress(stored, retry_after=round(max(0.1, min(left, 1.0)), 3))
        await self.reconcile_once()
        settled = await self.repo.get_message(stored.id)
        if settled is None or settled.state is MessageState.PENDING:
            raise SendInProgress(settled or stored, retry_after=0.5)  # another sweeper holds its row
        return settled

    def _pending_cutoff_seconds(self) -> float:
        return max(self.config.pending_grace, self.config.send_timeout)

    def _failure_error(self, msg: MessageRecord) -> SendBlocked | ProviderFailed:
        reason = Reason(msg.failure_reason) if msg.failure_reason in Reason.__members__ else Reason.PROVIDER_ERROR
        if reason in PREFLIGHT_REASONS:
            cached = self._cache.get(msg.instance_id)
            state = cached.record.state if cached else InstanceState.UNKNOWN
            return SendBlocked(reason, msg, state)
        if reason is Reason.OUTCOME_UNKNOWN:
            return OutcomeUnknown(msg, msg.failure_detail)
        return ProviderFailed(reason, msg, msg.failure_detail)

    async def _attempt_shielded(
        self, msg: MessageRecord, outbound: OutboundMessage, cached: _Cached, span: Span, budget: float
    ) -> MessageRecord:
        """Runs the provider call and records its outcome even if the caller goes away.

        A cancelled RPC must not leave a message PENDING after the provider accepted it.
        """
        # Its storage calls are bounded by --db-timeout only: they must outlive the caller's deadline.
        task: asyncio.Task[MessageRecord] = asyncio.create_task(
            self._attempt(msg, outbound, cached, span, budget), context=beyond_caller()
        )
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    async def _attempt(
        self, msg: MessageRecord, outbound: OutboundMessage, cached: _Cached, span: Span, budget: float
    ) -> MessageRecord:
        with use_span(span, end_on_exit=True):
            try:
                with self.tracer.start_as_current_span("wapi.provider.send", kind=SpanKind.CLIENT) as call:
                    started = time.perf_counter()
                    outcome = await self.provider.send(
                        Credentials(msg.instance_id, cached.token), outbound, timeout=budget
                    )
                    ok = outcome.accepted or outcome.queued  # queued: stored QUEUED, never SENT
                    failure = None if ok else (outcome.failure or Reason.PROVIDER_NO_MESSAGE_ID)
                    self.metrics.provider_latency.record(
                        time.perf_counter() - started,
                        {"operation": "send", "outcome": failure.value if failure else "ACCEPTED"},
                    )
                    if outcome.http_status is not None:
                        call.set_attribute("http.response.status_code", outcome.http_status)
                    if failure is not None:
                        call.set_status(Status(StatusCode.ERROR, failure.value))
                with self.tracer.start_as_current_span("wapi.persist", attributes={"db.operation": "update"}):
                    stored = await self._record_outcome(msg, outcome, failure)
                await self._feed_health(msg.instance_id, failure, cached)
                if stored.state is MessageState.SENT:
                    self.stall_watch.note_send(msg.instance_id)
                span.set_attribute("wapi.provider_message_id", stored.provider_message_id or "")
                span.set_attribute("wapi.attempt", stored.attempts)
                self._log_attempt(stored, cached.record.state, "", stored.state.value.lower())
                self.metrics.sends.add(1, {"outcome": stored.state.value.lower(), "reason": stored.failure_reason})
                if stored.state is MessageState.FAILED:
                    raise self._failure_error(stored)
                return stored
            except BaseException as error:
                _end_with_error(span, error, end=False)
                raise

    async def _record_outcome(self, msg: MessageRecord, outcome: SendOutcome, failure: Reason | None) -> MessageRecord:
        """The provider has answered: that answer must be stored. A database blip is retried
        (bounded); if it never comes back the reconciler will say OUTCOME_UNKNOWN, never SENT."""
        delay = 0.1
        for attempt in range(RECORD_ATTEMPTS):
            try:
                if failure is None and outcome.provider_message_id:
                    fast = await self.repo.record_sent(msg, outcome.provider_message_id, source="send")
                    if fast is not None:
                        return fast
                stored, _changes = await self.repo.record_send_outcome(
                    msg.id,
                    provider_message_id=outcome.provider_message_id if failure is None else None,
                    failure=failure,
                    detail=outcome.detail,
                    source="send",
                    queue_id=outcome.queue_id if failure is None else None,
                )
                return stored
            except (ConcurrentUpdateError, DBAPIError, OSError, TimeoutError):
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                log.warning("recording a provider answer failed; retrying", extra={"message_id": msg.id})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _feed_health(self, instance_id: str, failure: Reason | None, cached: _Cached) -> None:
        """Send outcomes are health signals too: a 401 means the token is dead, now."""
        change: InstanceChange | None = None
        if failure is Reason.TOKEN_INVALID:
            change = await self.repo.apply_instance_trigger(
                instance_id, InstanceTrigger.REPORT_TOKEN_INVALID, source="send"
            )
        elif failure is Reason.INSTANCE_NOT_FOUND:
            change = await self.repo.apply_instance_trigger(
                instance_id, InstanceTrigger.REPORT_NOT_FOUND, source="send"
            )
        elif failure in GATEWAY_FAILURES:
            count = await self.repo.count_gateway_failure(instance_id, failed=True)
            cached.record.consecutive_gateway_failures = count
            if count >= self.config.gateway_failure_threshold:
                change = await self.repo.apply_instance_trigger(
                    instance_id, InstanceTrigger.REPORT_GATEWAY_FAILURE, source="send"
                )
        elif failure is None and cached.record.consecutive_gateway_failures:
            await self.repo.count_gateway_failure(instance_id, failed=False)
            cached.record.consecutive_gateway_failures = 0
        self._after_instance_change(change)

    async def retry(self, message_id: str, *, time_remaining: float | None = None) -> MessageRecord:
        msg = await self.repo.get_message(message_id) if _plausible_id(message_id) else None
        if msg is None:
            raise MessageNotFound(message_id)
        if msg.state is not MessageState.FAILED:
            raise NotRetryable(msg)
        span = self.tracer.start_span(
            "wapi.send_attempt",
            attributes={
                "wapi.instance_id": msg.instance_id,
                "wapi.message_id": msg.id,
                "wapi.attempt": msg.attempts + 1,
                "wapi.kind": msg.kind.value,
                "wapi.retry": True,
            },
        )
        with use_span(span, end_on_exit=False):
            try:
                cached = await self._instance(msg.instance_id)
                if cached is None:
                    raise InstanceNotFound(msg.instance_id)
                try:
                    msg = await self.repo.reset_for_retry(message_id, source="retry", trace_ids=current_trace_ids())
                except ValueError:
                    current = await self.repo.get_message(message_id)
                    raise NotRetryable(current or msg) from None
                outbound = outbound_from_stored(msg.kind, msg.to, msg.content)
                health = cached.record
                span.set_attribute("wapi.session_health", health.state.value)
                blocked = block_reason(health.state, health.reason, health.plan, msg.kind)
                if blocked:
                    stored, _ = await self.repo.record_send_outcome(
                        msg.id,
                        provider_message_id=None,
                        failure=blocked,
                        detail=f"instance {health.state.value}",
                        source="preflight",
                    )
                    self._log_attempt(stored, health.state, blocked.value, "blocked")
                    self.metrics.sends.add(1, {"outcome": "blocked", "reason": blocked.value})
                    self.metrics.blocked.add(1, {"reason": blocked.value})
                    raise SendBlocked(blocked, stored, health.state)
            except BaseException as error:
                _end_with_error(span, error)
                raise
        return await self._attempt_shielded(msg, outbound, cached, span, self._budget(time_remaining))

    async def get_message(self, message_id: str) -> MessageRecord:
        # Ids we issue are UUIDs: anything else cannot exist (and is never sent to the database).
        msg = await self.repo.get_message(message_id) if _plausible_id(message_id) else None
        if msg is None:
            raise MessageNotFound(message_id)
        return msg

    async def list_messages(
        self,
        *,
        instance_id: str = "",
        states: Sequence[MessageState] = (),
        stuck_only: bool = False,
        page_size: int = 50,
        page_token: str = "",
    ) -> tuple[list[MessageRecord], str]:
        if page_size < 0 or page_size > 500:
            raise InvalidRequest([Violation("page_size", "must be between 0 and 500")])
        if instance_id and validate_instance_id(instance_id):
            raise InvalidRequest(validate_instance_id(instance_id))
        try:
            return await self.repo.list_messages(
                instance_id=instance_id,
                states=states,
                stuck_only=stuck_only,
                page_size=page_size or 50,
                page_token=page_token,
            )
        except ValueError:
            raise InvalidRequest([Violation("page_token", "not a token returned by ListMessages")]) from None

    # --- stuck messages ----------------------------------------------------------------------

    async def reconcile_once(self) -> list[MessageRecord]:
        """Messages a crashed process left PENDING become FAILED/OUTCOME_UNKNOWN, with an alert."""
        cutoff = utcnow() - timedelta(seconds=self._pending_cutoff_seconds())
        reconciled = await self.repo.reconcile_pending(cutoff)
        for msg in reconciled:
            self.metrics.sends.add(1, {"outcome": "failed", "reason": Reason.OUTCOME_UNKNOWN.value})
            log.warning(
                "ALERT send outcome unknown after a stop mid-send",
                extra={"alert": "OUTCOME_UNKNOWN", "instance_id": msg.instance_id, "message_id": msg.id},
            )
        return reconciled

    async def sweep_once(self) -> list[MessageRecord]:
        """Marks messages stuck in SENT, alerts once for each, and stalls instances that stopped
        delivering. Safe with several replicas: each message is returned to one sweeper only."""
        cutoff = utcnow() - timedelta(seconds=self.config.stuck_after)
        await self.repo.apply_parked()  # statuses that lost the race with their SENT update
        stuck = await self.repo.mark_stuck(cutoff)
        per_instance: dict[str, int] = {}
        for msg in stuck:
            per_instance[msg.instance_id] = per_instance.get(msg.instance_id, 0) + 1
            self.metrics.stuck_alerts.add(1, {"instance_id": msg.instance_id})
            age = (utcnow() - msg.sent_at).total_seconds() if msg.sent_at else 0.0
            log.warning(
                "ALERT message stuck in SENT",
                extra={
                    "alert": "MESSAGE_STUCK",
                    "instance_id": msg.instance_id,
                    "message_id": msg.id,
                    "provider_message_id": msg.provider_message_id or "",
                    "sent_seconds_ago": round(age, 1),
                },
            )
        for instance_id in await self.repo.stall_candidates(sorted(per_instance), self.config.stall_threshold):
            change = await self.repo.stall_if_stuck_run(instance_id, self.config.stall_threshold)
            if change is not None:
                log.warning(
                    "ALERT instance delivery stalled: sends blocked",
                    extra={"alert": "DELIVERY_STALLED", "instance_id": instance_id},
                )
            self._after_instance_change(change)
        await self.refresh_gauges()
        return stuck

    async def refresh_gauges(self) -> None:
        """Gauges read these snapshots: a scrape never queries the database."""
        self._gauge_stuck = await self.repo.stuck_counts()
        states: dict[str, int] = dict.fromkeys((s.value for s in InstanceState), 0)
        for record in await self.repo.list_instances():
            states[record.state.value] += 1
        self._gauge_states = states

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except Exception:
                log.warning("pending reconciliation failed", exc_info=True)
            await asyncio.sleep(self.config.sweep_interval)
            try:
                await self.sweep_once()
            except Exception:
                log.warning("stuck sweep failed", exc_info=True)

    # --- retention ---------------------------------------------------------------------------

    async def prune_once(self) -> PruneReport:
        """One retention run (skipped when another replica holds the lease), with its metrics."""
        report = await self.repo.prune(self.config.retention)
        if report.ran:
            for table, rows in report.deleted.items():
                self.metrics.pruned.add(rows, {"table": table})
            self.metrics.prune_duration.record(report.seconds)
            log.info(
                "retention run",
                extra={"deleted": report.deleted, "seconds": round(report.seconds, 3), "complete": report.complete},
            )
        return report

    async def _prune_forever(self) -> None:
        # Replicas started together spread their first attempt over the interval.
        await asyncio.sleep(random.uniform(0.0, min(self.config.retention_interval, 60.0)))
        while True:
            try:
                report = await self.prune_once()
            except Exception:
                log.warning("retention run failed", exc_info=True)
                report = None
            # A run cut short by its batch budget continues soon; otherwise wait the interval.
            incomplete = report is not None and report.ran and not report.complete
            await asyncio.sleep(
                min(5.0, self.config.retention_interval) if incomplete else self.config.retention_interval
            )

    # --- webhooks ----------------------------------------------------------------------------

    async def ingest(
        self, payload: bytes, headers: dict[str, str], received_at: datetime | None = None
    ) -> IngestResult:
        """Stores and applies one provider event. A body we cannot use is stored, then refused."""
        received_at = received_at or utcnow()
        event = parse_webhook(payload)
        clean = {k.lower(): v[:512] for k, v in list(headers.items())[:64] if k.lower() not in SECRET_HEADERS}
        with self.tracer.start_as_current_span(
            "wapi.webhook", attributes={"wapi.route": event.route.value, "wapi.instance_id": event.instance_id or ""}
        ) as span:
            result = await self.repo.ingest(event, payload, clean, received_at)
            if result.reason == EventReason.UNKNOWN_MESSAGE and event.provider_message_id and not result.duplicate:
                # Parked: its message may have turned SENT while we looked. Re-check after our commit;
                # the sender checks after its own, so one of the two always applies it.
                await self.repo.apply_parked(event.provider_message_id)
            span.set_attribute("wapi.duplicate", result.duplicate)
            span.set_attribute("wapi.event_reason", str(result.reason))
            for change in result.instance_changes:
                self._after_instance_change(change)
            for message_change in result.message_changes:
                self._observe_message_change(span, message_change, received_at)
            self.metrics.webhook_events.add(
                1, {"route": event.route.value, "outcome": "duplicate" if result.duplicate else str(result.reason)}
            )
        if result.message_changes and event.instance_id:
            cached = self._cache.get(event.instance_id)
            if cached is not None and cached.record.reason == Reason.DELIVERY_STALLED:
                # A delivery may have lifted the stall (the change itself is remembered above when
                # this replica made it); other instances keep their cached health.
                self._cache.pop(event.instance_id, None)
        if event.instance_id and not result.duplicate and event.route is not Route.UNROUTABLE:
            previous = self._touched.get(event.instance_id)
            if previous is None or previous < received_at:
                self._touched[event.instance_id] = received_at
        if event.route is Route.UNROUTABLE and event.reason in (EventReason.MALFORMED_JSON, EventReason.NOT_AN_OBJECT):
            raise InvalidPayload(str(event.reason), result.event_id)
        return result

    def _observe_message_change(self, span: Span, change: MessageChange, received_at: datetime) -> None:
        """Links the webhook span to the send attempt's span: Jaeger shows send → delivered → read."""
        span.set_attribute("wapi.message_id", change.message_id)
        if change.trace_id and change.span_id:
            span.add_link(
                SpanContext(
                    int(change.trace_id, 16),
                    int(change.span_id, 16),
                    is_remote=True,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED),
                ),
                {"wapi.message_id": change.message_id, "wapi.status": str(change.change.to_state)},
            )
        if (
            change.change.applied
            and change.sent_at is not None
            and change.change.to_state in (MessageState.DELIVERED, MessageState.READ)
        ):
            self.metrics.delivery_latency.record(
                max(0.0, (received_at - change.sent_at).total_seconds()), {"status": str(change.change.to_state)}
            )

    async def _flush_touches(self) -> None:
        while True:
            await asyncio.sleep(self.config.touch_flush_interval)
            if not self._touched:
                continue
            batch, self._touched = self._touched, {}
            try:
                await self.repo.touch_instances(batch)
            except Exception:
                log.warning("last_event_at flush failed; will retry", exc_info=True)
                for key, value in batch.items():
                    self._touched[key] = max(value, self._touched.get(key, value))


def _plausible_id(message_id: str) -> bool:
    return 0 < len(message_id) <= 64 and message_id.isprintable() and message_id.isascii()


def _end_with_error(span: Span, error: BaseException, *, end: bool = True) -> None:
    """Blocked and failed attempts end ERROR with their reason (what Jaeger filters on)."""
    reason = getattr(error, "reason", None)
    reason_text = reason.value if isinstance(reason, Reason) else type(error).__name__
    if isinstance(error, (SendBlocked, ProviderFailed)) or reason is not None:
        span.set_attribute(
            "wapi.blocked_reason" if isinstance(error, SendBlocked) else "wapi.failure_reason", reason_text
        )
    span.set_status(Status(StatusCode.ERROR, reason_text))
    if end:
        span.end()


__all__ = ["Gateway", "GatewayConfig", "InstanceEvent", "MessageChange"]
