"""Sending: SendMessage and RetryMessage through the one preflight, the provider call, and the record.

The preflight reads the instance's stored health from the cache (services/app/health.py): no
provider round-trip. A blocked attempt is stored FAILED with its reason; an accepted one is
recorded even if the caller goes away; the service never retries a send on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from adapters.deadline import beyond_caller
from services.app.clock import utcnow
from services.app.content import content_to_dict, new_message, outbound_from_stored, request_hash
from services.app.gateway_config import GatewayConfig
from services.app.health import CachedInstance, Instances
from services.app.message_queries import plausible_id
from services.app.optouts import OptOuts
from services.app.recipients import Recipients
from services.app.send_policy import SendPolicies
from services.app.send_protection import PREFLIGHT_REASONS, HoldPath, block_detail, learn_absence, recipient_block
from services.app.stall_watch import StallWatch
from services.observability.telemetry import Telemetry, current_trace_ids, use_span
from statemachine.domain import (
    Credentials,
    InstanceRecord,
    InstanceState,
    MessageKind,
    MessageRecord,
    MessageState,
    OutboundMessage,
    Reason,
    SendOutcome,
    StateChange,
)
from statemachine.errors import (
    IdempotencyConflict,
    InstanceNotFound,
    InvalidRequest,
    MessageNotFound,
    NotRetryable,
    OutcomeUnknown,
    ProviderFailed,
    SendBlocked,
    SendInProgress,
    SendPaced,
)
from statemachine.instance_machine import InstanceTrigger
from statemachine.ports import ConcurrentUpdateError, InstanceChange, Provider
from statemachine.preflight import block_reason
from statemachine.store_ports import SendingStore
from statemachine.validation import SendRequest, canonical_send

log = logging.getLogger("wapi_guard.core")


# Provider outcomes that say "the provider/gateway is in trouble", not "this message is bad".
GATEWAY_FAILURES = frozenset({Reason.PROVIDER_UNAVAILABLE, Reason.PROVIDER_TIMEOUT})
# A send's answer that says something about the instance itself.
SEND_FAILURE_TRIGGERS = {
    Reason.TOKEN_INVALID: InstanceTrigger.REPORT_TOKEN_INVALID,
    Reason.INSTANCE_NOT_FOUND: InstanceTrigger.REPORT_NOT_FOUND,
}
RECORD_ATTEMPTS = 8  # ~10 s of backoff to store an answer the provider already gave


class Sending:
    def __init__(
        self,
        repo: SendingStore,
        provider: Provider,
        config: GatewayConfig,
        telemetry: Telemetry,
        instances: Instances,
        stall_watch: StallWatch,
        settle_pending: Callable[[], Awaitable[object]],
    ) -> None:
        self.repo = repo
        self.provider = provider
        self.config = config
        self.tracer = telemetry.tracer
        self.metrics = telemetry.metrics
        self.instances = instances
        self.stall_watch = stall_watch
        # Settles PENDING messages past the grace (the jobs' reconciliation), for a replayed key.
        self.settle_pending = settle_pending
        # Provider calls whose answer is still being recorded (shutdown waits for them).
        self.inflight: set[asyncio.Task[MessageRecord]] = set()
        # The send policy, the suppression list and the number-check cache, wired by the
        # composition root (None: no such check).
        self.policies: SendPolicies | None = None
        self.opt_outs: OptOuts | None = None
        self.recipients: Recipients | None = None
        # Holds (services/app/holds.py), wired by the composition root: hold_for / send_at.
        self.holds: HoldPath | None = None

    async def send(self, req: SendRequest, *, time_remaining: float | None = None) -> MessageRecord:
        """`time_remaining` is the caller's gRPC deadline budget: the provider call never outlives it."""
        # The recipient as stored and sent: canonical E.164 digits (or the chat id as given).
        req, violations = canonical_send(req, self.config.phone_region)
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
                    cached = await self.instances.cached(req.instance_id)
                    if cached is None:
                        raise InstanceNotFound(req.instance_id)
                    health = cached.record
                    blocked = await self._block(health, req.kind, req.to)
                    preflight.set_attribute("wapi.session_health", health.state.value)
                span.set_attribute("wapi.session_health", health.state.value)
                if self.holds is not None and self.holds.wanted(req):
                    held = await self.holds.hold_or_admit(req, blocked, health)  # admitted: counted there
                    if isinstance(held, MessageRecord):
                        span.end()
                        return held
                    blocked = held or blocked  # a block waiting cannot clear (the recipient's): refused
                elif blocked is None and self.policies is not None:
                    replayed = await self._admit(req)  # the send policy (services/app/send_policy.py)
                    if replayed is not None:
                        return replayed
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
                    raise self._blocked(stored, health.state, blocked)
            except BaseException as error:
                _end_with_error(span, error)
                raise
        return await self._attempt_shielded(stored, outbound, cached, span, self._budget(time_remaining))

    async def _block(self, health: InstanceRecord, kind: MessageKind, to: str) -> Reason | None:
        """The preflight's verdict for a send or a retry: the instance's health (cached, never the
        provider), then the recipient (opt-outs, known absence)."""
        blocked = block_reason(
            health.state, health.reason, health.plan, kind, webhooks_blocked=self.instances.webhooks_block(health)
        )
        if blocked is None:
            blocked = await recipient_block(self.opt_outs, self.recipients, health.instance_id, to)
        return blocked

    async def _admit(self, req: SendRequest) -> MessageRecord | None:
        """The send policy's check. A refusal stores nothing; but a repeated key whose first
        request was stored gets that outcome (idempotency first), not a pacing answer."""
        assert self.policies is not None
        try:
            await self.policies.admit(req.instance_id, req.to)
        except SendPaced as paced:
            return await self._replay_or_refuse(req, paced)
        return None

    async def _replay_or_refuse(self, req: SendRequest, paced: SendPaced) -> MessageRecord:
        """A paced send: the stored outcome of a repeated key, else the refusal (`paced`)."""
        assert self.policies is not None
        if req.idempotency_key:
            stored_id = await self.policies.stored_message_id(req.instance_id, req.idempotency_key)
            stored = await self.repo.get_message(stored_id) if stored_id else None
            if stored is not None:
                assert req.kind is not None
                assert req.content is not None
                outbound = OutboundMessage(req.kind, req.to, req.content, req.reply_to, req.delay_seconds)
                return await self._replay(stored, request_hash(outbound, content_to_dict(outbound)))
        self.metrics.note_paced(paced.reason.value)
        raise paced

    def _budget(self, time_remaining: float | None) -> float:
        if time_remaining is None:
            return self.config.send_timeout
        # Leave a little of the caller's deadline to record the outcome and answer.
        return max(0.05, min(self.config.send_timeout, time_remaining * 0.9 - 0.05))

    def _new_message(
        self, req: SendRequest, outbound: OutboundMessage, blocked: Reason | None, health: InstanceRecord
    ) -> MessageRecord:
        initial = MessageState.FAILED if blocked else MessageState.PENDING
        trace_id, span_id = current_trace_ids()
        first = StateChange("", initial, blocked or Reason.CREATED, "preflight" if blocked else "send", utcnow())
        return new_message(
            req.instance_id,
            outbound,
            req.idempotency_key or f"auto:{uuid.uuid4()}",
            initial,
            first,
            failure_reason=blocked.value if blocked else "",
            failure_detail=block_detail(blocked, health.state),
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

    def _blocked(self, stored: MessageRecord, health: InstanceState, reason: Reason) -> SendBlocked:
        """The preflight refused the attempt (stored FAILED with `reason`): logged, counted, raised."""
        self._log_attempt(stored, health, reason.value, "blocked")
        self.metrics.sends.add(1, {"outcome": "blocked", "reason": reason.value})
        self.metrics.note_blocked(reason.value)
        return SendBlocked(reason, stored, health)

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
        grace = self.config.pending_cutoff_seconds()
        left = grace - (utcnow() - stored.updated_at).total_seconds()
        if left > 0:
            raise SendInProgress(stored, retry_after=round(max(0.1, min(left, 1.0)), 3))
        await self.settle_pending()
        settled = await self.repo.get_message(stored.id)
        if settled is None or settled.state is MessageState.PENDING:
            raise SendInProgress(settled or stored, retry_after=0.5)  # another sweeper holds its row
        return settled

    def _failure_error(self, msg: MessageRecord) -> SendBlocked | ProviderFailed:
        reason = Reason(msg.failure_reason) if msg.failure_reason in Reason.__members__ else Reason.PROVIDER_ERROR
        if reason in PREFLIGHT_REASONS:
            cached = self.instances.peek(msg.instance_id)
            state = cached.record.state if cached else InstanceState.UNKNOWN
            return SendBlocked(reason, msg, state)
        if reason is Reason.OUTCOME_UNKNOWN:
            return OutcomeUnknown(msg, msg.failure_detail)
        return ProviderFailed(reason, msg, msg.failure_detail)

    async def _attempt_shielded(
        self, msg: MessageRecord, outbound: OutboundMessage, cached: CachedInstance, span: Span, budget: float
    ) -> MessageRecord:
        """Runs the provider call and records its outcome even if the caller goes away.

        A cancelled RPC must not leave a message PENDING after the provider accepted it.
        """
        # Its storage calls are bounded by --db-timeout only: they must outlive the caller's deadline.
        task: asyncio.Task[MessageRecord] = asyncio.create_task(
            self._attempt(msg, outbound, cached, span, budget), context=beyond_caller()
        )
        self.inflight.add(task)
        task.add_done_callback(self.inflight.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    async def _attempt(
        self, msg: MessageRecord, outbound: OutboundMessage, cached: CachedInstance, span: Span, budget: float
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
                await learn_absence(self.recipients, stored, failure)  # NOT_ON_WHATSAPP: refused next time
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
        retryable: tuple[type[Exception], ...] = (
            ConcurrentUpdateError,
            *self.repo.transient_errors,
            OSError,
            TimeoutError,
        )
        for attempt in range(RECORD_ATTEMPTS):
            try:
                return await self.repo.record_outcome(
                    msg,
                    provider_message_id=outcome.provider_message_id,
                    failure=failure,
                    detail=outcome.detail,
                    source="send",
                    queue_id=outcome.queue_id,
                )
            except retryable:
                if attempt == RECORD_ATTEMPTS - 1:
                    raise
                log.warning("recording a provider answer failed; retrying", extra={"message_id": msg.id})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _feed_health(self, instance_id: str, failure: Reason | None, cached: CachedInstance) -> None:
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
        self.instances.after_change(change)

    async def retry(self, message_id: str, *, time_remaining: float | None = None) -> MessageRecord:
        msg = await self.repo.get_message(message_id) if plausible_id(message_id) else None
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
                cached = await self.instances.cached(msg.instance_id)
                if cached is None:
                    raise InstanceNotFound(msg.instance_id)
                if self.policies is not None:  # a retry is a send too: paced before it changes anything
                    await self.policies.admit(msg.instance_id, msg.to)
                try:
                    msg = await self.repo.reset_for_retry(message_id, source="retry", trace_ids=current_trace_ids())
                except ValueError:
                    current = await self.repo.get_message(message_id)
                    raise NotRetryable(current or msg) from None
                outbound = outbound_from_stored(msg.kind, msg.to, msg.content)
                health = cached.record
                span.set_attribute("wapi.session_health", health.state.value)
                blocked = await self._block(health, msg.kind, msg.to)
                if blocked:
                    stored, _ = await self.repo.record_send_outcome(
                        msg.id,
                        provider_message_id=None,
                        failure=blocked,
                        detail=block_detail(blocked, health.state),
                        source="preflight",
                    )
                    raise self._blocked(stored, health.state, blocked)
            except BaseException as error:
                _end_with_error(span, error)
                raise
        return await self._attempt_shielded(msg, outbound, cached, span, self._budget(time_remaining))


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
