"""The send policy's use cases: the preflight's admission check, and setting/reading a policy.

Cost per send (bench/policy_check.py): an instance with no active policy pays one dict lookup. An
instance with one pays, in memory, the quiet hours, a send from this replica's slice of the
per-minute cap and a lookup in its known contacts; the store is asked only to refill the slice
(one statement every `lease_size(cap)` sends), for a recipient this replica has not seen yet (one
primary-key read; one transaction when the recipient is new and must be counted), and on every send
when the policy has an interval (one statement that checks and moves the floor). The policies
themselves are re-read every `refresh` seconds (at once on this replica when one changes here).

Across replicas the limits hold: every reservation is counted in the shared row before it is spent.
The price of the slices is under-use, never overshoot: a replica's unspent slice of a minute is lost
to the others until the minute ends (at most replicas x slice - 1 sends), and given back when the
replica stops. Known contacts are cached as positives only: "known" never becomes false.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.app.clock import utcnow
from statemachine.domain import Reason
from statemachine.errors import InvalidRequest, SendPaced
from statemachine.send_policy import (
    MINUTE,
    Budgets,
    NewRecipient,
    PolicyChange,
    PolicyRecord,
    PolicyVerdict,
    SendPolicy,
    SendPolicyStore,
    budgets,
    daily_new_budget,
    lease_size,
    new_recipient_refusal,
    paces,
    quiet_wait,
    validate_policy,
    window_start,
)
from statemachine.validation import Violation

log = logging.getLogger("wapi_guard.send_policy")
AWAITING_PHONE = ""  # warmup_phone of a number registered as new, before its first connection
_KNOWN_MAX = 1_000_000  # known contacts remembered per replica (all instances); cleared past it


@dataclass(slots=True)
class _Slice:
    """This replica's reserved sends of one instance's per-minute cap, in one minute."""

    minute: datetime
    left: int


class SendPolicies:
    def __init__(
        self, store: SendPolicyStore, *, refresh: float = 2.0, new_number_policy: SendPolicy | None = None
    ) -> None:
        self.store = store
        self.new_number_policy = new_number_policy or SendPolicy()
        self.refresh = refresh
        self._records: dict[str, PolicyRecord] = {}
        self._read_at = float("-inf")
        self._random = random.SystemRandom()
        self._slices: dict[str, _Slice] = {}
        self._known: dict[str, set[str]] = {}
        self._known_count = 0
        self._background: set[asyncio.Task[None]] = set()
        self._phones: dict[str, str] = {}  # the phone each instance was last seen connected with

    async def _policy(self, instance_id: str) -> PolicyRecord | None:
        if time.monotonic() - self._read_at >= self.refresh:
            self._records = await self.store.policies()
            self._read_at = time.monotonic()
        record = self._records.get(instance_id)
        return record if record is not None and record.policy.active else None

    async def view(self, instance_id: str | None = None) -> None:
        """Brings this replica's copy of the policies and counters up to date for an operator's
        read: one instance's (one primary-key read), or all of them (one query, like the list of
        instances it goes with)."""
        if instance_id is None:
            self._read_at = float("-inf")
            await self._policy("")
        elif (record := await self.store.get_policy(instance_id)) is not None:
            self._records[instance_id] = record

    def budgets_here(self, instance_id: str) -> tuple[Budgets, str]:
        """The instance's budgets used and left and its shared opt-out list, from this replica's
        copy (no I/O; reserved slices count as used)."""
        record = self._records.get(instance_id)
        if record is None:
            return Budgets(), ""
        return budgets(record.policy, record.counters, utcnow(), record.warmup_anchor), record.optout_list or ""

    def policy_here(self, instance_id: str) -> SendPolicy:
        """The instance's policy in this replica's copy (no I/O; all limits 0: none set)."""
        record = self._records.get(instance_id)
        return record.policy if record is not None else SendPolicy()

    def _remember(self, instance_id: str, recipient: str) -> None:
        if self._known_count >= _KNOWN_MAX:
            self._known.clear()
            self._known_count = 0
        known = self._known.setdefault(instance_id, set())
        if recipient not in known:
            known.add(recipient)
            self._known_count += 1

    async def admit(self, instance_id: str, recipient: str) -> None:
        """Raises SendPaced (RESOURCE_EXHAUSTED with RetryInfo) when the policy refuses this send now;
        otherwise the send is counted against the instance's budgets."""
        record = await self._policy(instance_id)
        if record is None:
            return
        policy, now = record.policy, utcnow()
        if quiet := quiet_wait(policy, now):
            self._refuse(instance_id, PolicyVerdict(Reason.QUIET_HOURS, quiet))
        took = await self._take_send(instance_id, policy, now)
        try:
            if paces(policy):
                gap = policy.min_interval_seconds + policy.jitter_seconds * self._random.random()
                floor = await self.store.reserve_interval(instance_id, now, now + timedelta(seconds=gap))
                if floor is not None:
                    self._refuse(instance_id, PolicyVerdict(Reason.SEND_INTERVAL, (floor - now).total_seconds()))
            if recipient not in self._known.get(instance_id, ()):
                await self._count_recipient(record, recipient, now)
        except SendPaced:
            if took:
                self._slices[instance_id].left += 1  # not spent: this replica's slice keeps it
            raise

    def _refuse(self, instance_id: str, verdict: PolicyVerdict) -> None:
        assert verdict.reason is not None
        raise SendPaced(verdict.reason, instance_id, round(max(verdict.retry_after, 0.001), 3), verdict.limit)

    async def _take_send(self, instance_id: str, policy: SendPolicy, now: datetime) -> bool:
        """One send from this replica's slice of the per-minute cap (refilled from the shared row)."""
        cap = policy.max_per_minute
        if not cap:
            return False
        minute = window_start(now, MINUTE)
        held = self._slices.get(instance_id)
        if held is None or held.minute != minute or held.left <= 0:
            size = lease_size(cap)
            granted = size if await self.store.reserve_sends(instance_id, minute, size, cap) else 0
            if not granted and size > 1 and await self.store.reserve_sends(instance_id, minute, 1, cap):
                granted = 1  # near the cap: one at a time
            if not granted:
                retry = (minute + MINUTE - now).total_seconds()
                self._refuse(instance_id, PolicyVerdict(Reason.SEND_RATE_PER_MINUTE, retry, cap))
            held = self._slices[instance_id] = _Slice(minute, granted)
        held.left -= 1
        return True

    async def _count_recipient(self, record: PolicyRecord, recipient: str, now: datetime) -> None:
        """A recipient this replica has not seen: known to the store (cache it), or new and counted
        against the hour's and the day's (warm-up) budgets, or refused with the spent budget."""
        policy, instance_id = record.policy, record.instance_id
        if await self.store.known(instance_id, recipient):
            self._remember(instance_id, recipient)
            return
        day_budget = daily_new_budget(policy, now, record.warmup_anchor)
        if not policy.new_recipients_per_hour and not policy.new_recipients_per_day:
            answer = await self.store.count_new(instance_id, recipient, now, per_hour=0, per_day=0)
        else:
            # A daily budget of 0 on the ramp's first day refuses every new recipient.
            per_day = day_budget if policy.new_recipients_per_day else 0
            if policy.new_recipients_per_day and not day_budget:
                answer = NewRecipient.REFUSED
            else:
                answer = await self.store.count_new(
                    instance_id, recipient, now, per_hour=policy.new_recipients_per_hour, per_day=per_day
                )
        if answer is not NewRecipient.REFUSED:
            self._remember(instance_id, recipient)
            return
        current = await self.store.get_policy(instance_id)
        counters = current.counters if current is not None else record.counters
        verdict = new_recipient_refusal(policy, counters, now, record.warmup_anchor)
        self._refuse(instance_id, verdict)

    async def aclose(self) -> None:
        """Gives back the sends this replica reserved and did not spend (their minute still running)."""
        if self._background:
            await asyncio.wait(self._background, timeout=5)
        slices, self._slices = self._slices, {}
        minute = window_start(utcnow(), MINUTE)
        for instance_id, held in slices.items():
            if held.minute == minute and held.left > 0:
                await self.store.release_sends(instance_id, minute, held.left)

    async def note_inbound(self, instance_id: str, sender: str, at: datetime) -> None:
        """A customer's 1:1 message makes them a known contact: replies to them are not new
        recipients. Only instances with a policy keep this (others pay nothing)."""
        if not sender.isdigit() or await self._policy(instance_id) is None:
            return
        if sender not in self._known.get(instance_id, ()):
            await self.store.note_inbound(instance_id, sender, at)
            self._remember(instance_id, sender)

    async def declare_new_number(self, instance_id: str, *, by: str) -> PolicyRecord | None:
        """A number registered as new gets the warm-up policy from now, unless it already has a
        policy (an operator's choice is never overwritten). Already seen connected: the ramp runs
        from now on that phone; else from its first connection."""
        current = await self.store.get_policy(instance_id)
        if (current is not None and current.policy.active) or not self.new_number_policy.active:
            return current
        record = await self.store.anchor_warmup(
            instance_id,
            phone=None,
            restart=True,
            policy_if_inactive=self.new_number_policy,
            change="NEW_NUMBER",
            now=utcnow(),
            by=by,
        )
        self._read_at = float("-inf")
        return record

    async def connected(self, instance_id: str, phone: str, *, paired_here: bool = False) -> PolicyRecord | None:
        """The instance is connected with `phone` (its phone identity). The warm-up ramp runs from the
        number's first connection through wapi-guard: a number registered as new is re-anchored on
        its first phone; an instance never seen with a session that wapi-guard paired (`paired_here`:
        a QR or pairing code asked for here) gets the new-number policy; a phone other than the one the
        ramp was anchored on is a new number on the instance: its ramp restarts from now. The first
        connection of an established number (seen connected, not paired here) only records its
        phone, and so does a new phone on an instance without a ramp: its traffic stays unchanged
        (an operator who wants the ramp declares it new)."""
        if not phone or self._phones.get(instance_id) == phone:
            return None
        current = await self.store.get_policy(instance_id)
        self._phones[instance_id] = phone
        if current is not None and current.warmup_phone == phone:
            return current
        if current is None or (not current.policy.active and current.warmup_phone is None):
            # A first pairing: paired here, and never seen with a session before (a broken session
            # paired again is an established number coming back, not a new one).
            first = paired_here and current is None and not await self.store.had_session(instance_id)
            if first and self.new_number_policy.active:
                return await self._anchor(instance_id, phone, "FIRST_PAIRING", restart=True, new=True)
            return await self._anchor(instance_id, phone, "PHONE_SEEN", restart=False, new=False)
        if current.warmup_phone == AWAITING_PHONE:  # registered as new: the ramp starts now
            return await self._anchor(instance_id, phone, "FIRST_CONNECTION", restart=True, new=False)
        if current.warmup_phone is None:  # an operator's policy: its anchor stays
            return await self._anchor(instance_id, phone, "PHONE_SEEN", restart=False, new=False)
        if not current.policy.warmup_days:  # no ramp to restart: the new phone is recorded
            return await self._anchor(instance_id, phone, "PHONE_SEEN", restart=False, new=False)
        log.info("new phone identity: the warm-up ramp restarts", extra={"instance_id": instance_id})
        return await self._anchor(instance_id, phone, "WARMUP_RESTART", restart=True, new=False)

    def connected_later(self, instance_id: str, phone: str, paired_here: bool) -> None:
        """`connected` from the instance cache's synchronous change hook: run in the background
        (its failure is logged; the next connection event tries again)."""

        async def run() -> None:
            try:
                await self.connected(instance_id, phone, paired_here=paired_here)
            except Exception:
                self._phones.pop(instance_id, None)
                log.warning("recording the warm-up phone failed", extra={"instance_id": instance_id}, exc_info=True)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _anchor(self, instance_id: str, phone: str, change: str, *, restart: bool, new: bool) -> PolicyRecord:
        """`new`: an instance without an active policy gets the new-number policy."""
        record = await self.store.anchor_warmup(
            instance_id,
            phone=phone,
            restart=restart,
            policy_if_inactive=self.new_number_policy if new else None,
            change=change,
            now=utcnow(),
        )
        self._read_at = float("-inf")
        return record

    async def stored_message_id(self, instance_id: str, idempotency_key: str) -> str | None:
        return await self.store.message_id_by_key(instance_id, idempotency_key)

    async def get(self, instance_id: str) -> PolicyRecord | None:
        return await self.store.get_policy(instance_id)

    async def history(self, instance_id: str, *, limit: int = 50, before_id: int = 0) -> list[tuple[int, PolicyChange]]:
        if not 1 <= limit <= 500:
            raise InvalidRequest([Violation("page_size", "must be between 1 and 500")])
        return await self.store.history(instance_id, limit=limit, before_id=before_id)

    async def set(
        self,
        instance_id: str,
        policy: SendPolicy,
        *,
        by: str,
        warmup_anchor: datetime | None = None,
        change: str = "SET",
        warmup_phone: str | None = None,
        optout_list: str | None = None,
    ) -> PolicyRecord:
        problems = validate_policy(policy)
        if problems:
            raise InvalidRequest([Violation(f"policy.{field}", text) for field, text in problems])
        now = utcnow()
        current = await self.store.get_policy(instance_id)
        if warmup_anchor is None and policy.warmup_days:
            # The ramp runs from when it was first asked for, unless the caller says from when.
            warmup_anchor = current.warmup_anchor if current and current.warmup_anchor else now
        record = await self.store.set_policy(
            instance_id,
            policy,
            warmup_anchor=warmup_anchor,
            by=by,
            now=now,
            change=change,
            warmup_phone=warmup_phone if warmup_phone is not None else (current.warmup_phone if current else None),
            optout_list=optout_list if optout_list is not None else (current.optout_list if current else None),
        )
        self._read_at = float("-inf")  # this replica sees the change at once
        log.info(
            "send policy changed",
            extra={"instance_id": instance_id, "by": by, "active": policy.active, "change": change},
        )
        return record
