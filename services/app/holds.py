"""Holds: a send that may wait is stored HELD instead of refused, and a dispatcher in every
replica sends it when it can (statemachine/hold.py has the rules, docs/holds.md the story).

- `hold_or_admit` is the send path's part: called only for a request with hold_for / send_at.
- `dispatch_once` claims due holds (bounded batch; each claimed by one replica only), re-runs the
  whole preflight (health, opt-out, recipient cache, send policy) and sends through the normal
  send path, or holds again with the new reason and due time, or fails an expired hold.
- `wake` (an instance CONNECTED again) makes its health holds due now, unless its policy asks for
  the operator's `release_held`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from services.app.clock import utcnow
from services.app.content import new_message, outbound_from_stored
from services.app.send_protection import block_detail, recipient_block
from services.app.sending import Sending
from statemachine import hold as rules
from statemachine.domain import (
    InstanceRecord,
    InstanceState,
    MessageRecord,
    MessageState,
    OutboundMessage,
    Reason,
    StateChange,
)
from statemachine.errors import GuardError, InvalidRequest, MessageNotFound, NotHeld, SendPaced
from statemachine.hold import Hold
from statemachine.ids import time_ordered_id
from statemachine.validation import SendRequest, Violation

log = logging.getLogger("wapi_guard.holds")


class HoldStore(Protocol):
    async def insert_held(self, msg: MessageRecord, hold: Hold) -> tuple[MessageRecord, bool]: ...
    async def due(self, now: datetime, limit: int, *, exclude: list[str]) -> list[Hold]: ...
    async def postpone(self, holds: list[Hold]) -> None: ...
    async def claim(
        self, message_ids: list[str], now: datetime, *, give_up: Mapping[str, tuple[Reason, datetime]] = ...
    ) -> tuple[list[tuple[MessageRecord, Hold]], list[MessageRecord]]: ...
    async def hold_again(
        self, msg: MessageRecord, hold: Hold, now: datetime, *, give_up: tuple[Reason, datetime] | None = None
    ) -> MessageRecord | None: ...
    async def cancel(self, message_id: str, by: str, now: datetime) -> tuple[MessageRecord | None, bool]: ...
    async def release_instance(self, instance_id: str, now: datetime) -> int: ...
    async def wake(self, instance_id: str, now: datetime) -> int: ...
    async def counts(self, instance_id: str) -> Counter[str]: ...


class Holds:
    def __init__(
        self,
        store: HoldStore,
        sending: Sending,
        *,
        batch: int = 100,
        interval: float = 0.5,
        recheck: timedelta = rules.DEFAULT_RECHECK,
    ) -> None:
        self.store = store
        self.sending = sending
        self.metrics = sending.metrics
        self.batch = batch
        self.interval = interval
        self.recheck = recheck
        self._nudge = asyncio.Event()
        self._next_due: datetime | None = None  # the earliest due time the last batch postponed to
        self._paced: dict[str, datetime] = {}  # instance → until when its policy paces it
        self._pace_reason: dict[str, Reason] = {}  # instance → the reason its policy paces it
        self._inflight: set[asyncio.Task[None]] = set()  # dispatched sends (their provider calls)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # --- the send path -------------------------------------------------------------------------

    @staticmethod
    def wanted(req: SendRequest) -> bool:
        """The request asks for a hold; bad values are INVALID_ARGUMENT (with the field)."""
        if req.hold is None:
            return False
        problems = rules.validate_hold(req.hold, utcnow())
        if problems:
            raise InvalidRequest([Violation(field, text) for field, text in problems])
        return req.hold.wanted

    async def hold_or_admit(
        self, req: SendRequest, blocked: Reason | None, health: InstanceRecord
    ) -> MessageRecord | Reason | None:
        """The held message (new, or the stored one of a repeated key); or the reason to refuse it
        with instead of the instance's (the recipient's block, which waiting cannot clear); or None:
        the send goes on as without a hold (refused when the block cannot clear by waiting; sent
        when the policy admitted it, already counted)."""
        assert req.hold is not None
        now = utcnow()
        if blocked is not None and not rules.holdable(blocked):
            return None
        s = self.sending
        if blocked is not None:  # the preflight stopped at the instance: the recipient's side too
            permanent = await recipient_block(s.opt_outs, s.recipients, req.instance_id, req.to)
            if permanent is not None:
                return permanent
        scheduled = req.hold.send_at is not None and req.hold.send_at > now
        if scheduled:
            return await self._hold_new(req, Reason.SCHEDULED, paced=False, health=health)
        if blocked is not None:
            return await self._hold_new(req, blocked, paced=False, health=health)
        if self.sending.policies is not None:
            try:
                await self.sending.policies.admit(req.instance_id, req.to)
            except SendPaced as paced:
                if rules.outlasts(paced.retry_after, now, rules.expiry(req.hold, now)):
                    # Waiting cannot succeed: refused at once, as without a hold (a repeated key
                    # whose first request was stored still gets that outcome).
                    return await self.sending._replay_or_refuse(req, paced)
                return await self._hold_new(req, paced.reason, paced=True, health=health, retry_after=paced.retry_after)
        return None

    async def _hold_new(
        self, req: SendRequest, reason: Reason, *, paced: bool, health: InstanceRecord, retry_after: float = 0.0
    ) -> MessageRecord:
        assert req.hold is not None
        assert req.kind is not None
        assert req.content is not None
        now = utcnow()
        outbound = OutboundMessage(req.kind, req.to, req.content, req.reply_to, req.delay_seconds)
        msg = new_message(
            req.instance_id,
            outbound,
            req.idempotency_key or f"auto:{time_ordered_id()}",
            MessageState.HELD,
            StateChange("", MessageState.HELD, reason, "hold", now),
        )
        hold = rules.new_hold(
            msg,
            reason,
            paced=paced,
            now=now,
            expires_at=rules.expiry(req.hold, now),
            not_before=req.hold.send_at,
            retry_after=retry_after,
            recheck=self.recheck,
            confirm_release=await self._confirm_release(req.instance_id, reason, paced),
        )
        stored, created = await self.store.insert_held(msg, hold)
        if not created:
            return await self.sending._replay(stored, msg.request_hash)
        self.metrics.holds.add(1, {"event": "held", "reason": reason.value})
        log.info(
            "send held",
            extra={
                "instance_id": msg.instance_id,
                "message_id": msg.id,
                "reason": reason.value,
                "health": health.state.value,
            },
        )
        self._nudge.set()
        return stored

    async def _confirm_release(self, instance_id: str, reason: Reason, paced: bool) -> bool:
        if paced or reason not in rules.HEALTH_REASONS or self.sending.policies is None:
            return False
        record = await self.sending.policies.get(instance_id)
        return bool(record and record.policy.release_requires_confirmation)

    # --- cancel and release ----------------------------------------------------------------------

    async def cancel(self, message_id: str, *, by: str) -> MessageRecord:
        msg, cancelled = await self.store.cancel(message_id, by, utcnow())
        if msg is None:
            raise MessageNotFound(message_id)
        if not cancelled:
            raise NotHeld(msg)
        self.metrics.holds.add(1, {"event": "cancelled", "reason": Reason.CANCELLED.value})
        return msg

    async def release_held(self, instance_id: str) -> int:
        released = await self.store.release_instance(instance_id, utcnow())
        self._nudge.set()
        return released

    def wake(self, instance_id: str) -> None:
        """An instance is CONNECTED again (any replica saw it): its health holds are due now."""
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._wake(instance_id))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _wake(self, instance_id: str) -> None:
        if await self.store.wake(instance_id, utcnow()):
            self._nudge.set()

    async def counts(self, instance_id: str) -> Counter[str]:
        return await self.store.counts(instance_id)

    # --- the dispatcher --------------------------------------------------------------------------

    async def dispatch_once(self) -> int:
        """One bounded batch of due holds. Those still waiting stay HELD without a state change
        (no event): a health hold whose instance is still unhealthy or that waits for the
        operator is postponed; a policy hold is offered to the send policy before any claim, and
        once the policy paces an instance, its holds are left as they are and the instance is left
        out of the next batches until its RetryInfo time (no PENDING churn, no row updates, and
        the batches reach other instances' holds meanwhile). The others are claimed and
        dispatched in the background. Returns how many were claimed."""
        now = utcnow()
        self._paced = {i: t for i, t in self._paced.items() if t > now}
        self._pace_reason = {i: r for i, r in self._pace_reason.items() if i in self._paced}
        due = await self.store.due(now, self.batch, exclude=sorted(self._paced))
        waiting: list[Hold] = []
        ready: list[str] = []
        admitted: set[str] = set()
        hopeless: dict[str, tuple[Reason, datetime]] = {}  # the policy allows them only past their expiry
        for hold in due:
            if rules.expired(hold, now):
                ready.append(hold.message_id)
            elif await self._still_waiting(hold):
                waiting.append(rules.postponed(hold, now, self.recheck))
            else:
                if hold.instance_id not in self._paced:
                    refusal = await self._admit(hold)
                    if refusal is None:
                        ready.append(hold.message_id)
                        admitted.add(hold.message_id)
                        continue
                    self._paced[hold.instance_id] = now + timedelta(seconds=refusal[1])
                    self._pace_reason[hold.instance_id] = refusal[0]
                until = self._paced[hold.instance_id]
                if until > hold.expires_at:
                    hopeless[hold.message_id] = (self._pace_reason[hold.instance_id], until)
                    ready.append(hold.message_id)
        await self.store.postpone(waiting)
        self._next_due = min([*(h.due_at for h in waiting), *self._paced.values()], default=None)
        released, expired = await self.store.claim(ready, now, give_up=hopeless)
        for msg in expired:
            self.metrics.holds.add(1, {"event": "expired", "reason": msg.failure_reason})
        for msg, hold in released:
            task = asyncio.create_task(self._dispatch(msg, hold, msg.id in admitted))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(released) + len(expired)

    async def _still_waiting(self, hold: Hold) -> bool:
        """A health hold stays put while the instance is still unhealthy (no claim, no event)."""
        if hold.needs_release:
            return True
        if hold.waits_for is not rules.WaitsFor.HEALTH:
            return False
        instances = self.sending.instances
        cached = await instances.cached(hold.instance_id)
        if cached is None:
            return False  # removed: claimed, and failed INSTANCE_NOT_FOUND by the preflight
        return cached.record.state is not InstanceState.CONNECTED or instances.webhooks_block(cached.record)

    async def _admit(self, hold: Hold) -> tuple[Reason, float] | None:
        """The send policy's check for a due hold before it is claimed: None when it may go now
        (counted), else the policy's reason and retry_after."""
        if self.sending.policies is None:
            return None
        try:
            await self.sending.policies.admit(hold.instance_id, hold.recipient)
        except SendPaced as refusal:
            return refusal.reason, max(refusal.retry_after, 0.001)
        return None

    async def _dispatch(self, msg: MessageRecord, hold: Hold, admitted: bool) -> None:
        """The released (PENDING) message through the whole preflight, then the normal send."""
        try:
            await self._preflight_and_send(msg, hold, admitted)
        except GuardError as error:  # the provider's refusal or failure: stored FAILED, evented
            self.metrics.holds.add(1, {"event": "released", "reason": error.reason.value})
        except Exception:
            log.warning("dispatching a held message failed", extra={"message_id": msg.id}, exc_info=True)

    async def _preflight_and_send(self, msg: MessageRecord, hold: Hold, admitted: bool) -> None:
        s = self.sending
        cached = await s.instances.cached(msg.instance_id)
        blocked = Reason.INSTANCE_NOT_FOUND if cached is None else await s._block(cached.record, msg.kind, msg.to)
        if blocked is not None and (cached is None or not rules.holdable(blocked)):
            state = cached.record.state if cached else InstanceState.UNKNOWN
            await s.repo.record_send_outcome(
                msg.id,
                provider_message_id=None,
                failure=blocked,
                detail=block_detail(blocked, state),
                source="preflight",
            )
            self.metrics.holds.add(1, {"event": "refused", "reason": blocked.value})
            return
        if blocked is not None:
            await self._again(msg, hold, blocked, paced=False, retry_after=0.0)
            return
        assert cached is not None
        if s.policies is not None and not admitted:
            try:
                await s.policies.admit(msg.instance_id, msg.to)
            except SendPaced as paced:
                await self._again(msg, hold, paced.reason, paced=True, retry_after=paced.retry_after)
                return
        outbound = outbound_from_stored(msg.kind, msg.to, msg.content)
        span = s.tracer.start_span(
            "wapi.send_attempt",
            attributes={"wapi.instance_id": msg.instance_id, "wapi.message_id": msg.id, "wapi.held": True},
        )
        sent = await s._attempt_shielded(msg, outbound, cached, span, s._budget(None))
        self.metrics.holds.add(1, {"event": "released", "reason": sent.state.value})

    async def _again(self, msg: MessageRecord, hold: Hold, reason: Reason, *, paced: bool, retry_after: float) -> None:
        """Blocked again at dispatch: back to HELD with the new reason and due time (or FAILED
        with that reason when the hold has expired)."""
        now = utcnow()
        retry_at = now + timedelta(seconds=retry_after)
        if paced and rules.outlasts(retry_after, now, hold.expires_at):  # waiting cannot succeed
            ended = await self.store.hold_again(msg, hold, now, give_up=(reason, retry_at))
            if ended is not None:
                self.metrics.holds.add(1, {"event": "expired", "reason": ended.failure_reason})
            return
        again = rules.new_hold(
            msg,
            reason,
            paced=paced,
            now=now,
            expires_at=hold.expires_at,
            retry_after=retry_after,
            recheck=self.recheck,
            confirm_release=hold.needs_release or await self._confirm_release(msg.instance_id, reason, paced),
        )
        after = await self.store.hold_again(msg, again, now)
        if after is not None and after.state is MessageState.FAILED:
            self.metrics.holds.add(1, {"event": "expired", "reason": after.failure_reason})

    async def run_forever(self) -> None:
        while not self._stopping:
            while len(self._inflight) >= self.batch:  # at most one batch of provider calls in flight
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
            try:
                claimed = await self.dispatch_once()
            except Exception:
                log.warning("hold dispatch failed", exc_info=True)
                claimed = 0
            if claimed >= self.batch:
                await asyncio.sleep(0)
                continue
            wait = self.interval
            if self._next_due is not None:  # a paced backlog: back when its next one is due
                wait = min(wait, max(0.0, (self._next_due - utcnow()).total_seconds()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), wait)
            self._nudge.clear()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="hold-dispatcher")

    async def settle(self) -> None:
        """Waits for the sends dispatched so far (tests, shutdown)."""
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def aclose(self) -> None:
        """The loop ends after its current batch (a batch cancelled mid-query could strand a pooled
        connection); cancelled only if that takes more than a few seconds."""
        self._stopping = True
        self._nudge.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        with contextlib.suppress(TimeoutError):  # the provider calls themselves are shielded
            await asyncio.wait_for(self.settle(), 30)
