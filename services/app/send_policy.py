"""The send policy's use cases: the preflight's admission check, and setting/reading a policy.

An instance with no active policy costs the preflight one set lookup in memory (the set of
instances with a policy is re-read from the store every `refresh` seconds, and at once on this
replica when a policy changes here). An instance with one costs one short transaction
(`SendPolicyStore.admit`) that decides and counts. The rule itself is statemachine/send_policy.py.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import datetime

from services.app.clock import utcnow
from statemachine.errors import InvalidRequest, SendPaced
from statemachine.send_policy import PolicyRecord, SendPolicy, SendPolicyStore, validate_policy
from statemachine.validation import Violation

log = logging.getLogger("wapi_guard.send_policy")


class SendPolicies:
    def __init__(
        self, store: SendPolicyStore, *, refresh: float = 2.0, new_number_policy: SendPolicy | None = None
    ) -> None:
        self.store = store
        self.new_number_policy = new_number_policy or SendPolicy()
        self.refresh = refresh
        self._active: set[str] = set()
        self._read_at = float("-inf")
        self._random = random.SystemRandom()

    async def _active_now(self) -> set[str]:
        if time.monotonic() - self._read_at >= self.refresh:
            self._active = await self.store.active_instances()
            self._read_at = time.monotonic()
        return self._active

    async def admit(self, instance_id: str, recipient: str) -> None:
        """Raises SendPaced (RESOURCE_EXHAUSTED with RetryInfo) when the policy refuses this send now;
        otherwise the send is counted against the instance's budgets."""
        if instance_id not in await self._active_now():
            return
        verdict = await self.store.admit(instance_id, recipient, utcnow(), self._random.random())
        if verdict.reason is not None:
            raise SendPaced(verdict.reason, instance_id, round(verdict.retry_after, 3), verdict.limit)

    async def note_inbound(self, instance_id: str, sender: str, at: datetime) -> None:
        """A customer's 1:1 message makes them a known contact: replies to them are not new
        recipients. Only instances with a policy keep this (others pay nothing)."""
        if sender.isdigit() and instance_id in await self._active_now():
            await self.store.note_inbound(instance_id, sender, at)

    async def declare_new_number(self, instance_id: str, *, by: str) -> PolicyRecord | None:
        """A number registered as new gets the warm-up policy from now, unless it already has a
        policy (an operator's choice is never overwritten)."""
        current = await self.store.get_policy(instance_id)
        if (current is not None and current.policy.active) or not self.new_number_policy.active:
            return current
        return await self.set(instance_id, self.new_number_policy, by=by, warmup_anchor=utcnow())

    async def stored_message_id(self, instance_id: str, idempotency_key: str) -> str | None:
        return await self.store.message_id_by_key(instance_id, idempotency_key)

    async def get(self, instance_id: str) -> PolicyRecord | None:
        return await self.store.get_policy(instance_id)

    async def set(
        self, instance_id: str, policy: SendPolicy, *, by: str, warmup_anchor: datetime | None = None
    ) -> PolicyRecord:
        problems = validate_policy(policy)
        if problems:
            raise InvalidRequest([Violation(f"policy.{field}", text) for field, text in problems])
        now = utcnow()
        current = await self.store.get_policy(instance_id)
        if warmup_anchor is None and policy.warmup_days:
            # The ramp runs from when it was first asked for, unless the caller says from when.
            warmup_anchor = current.warmup_anchor if current and current.warmup_anchor else now
        record = await self.store.set_policy(instance_id, policy, warmup_anchor=warmup_anchor, by=by, now=now)
        self._read_at = float("-inf")  # this replica sees the change at once
        log.info(
            "send policy changed",
            extra={"instance_id": instance_id, "by": by, "active": policy.active, "warmup_days": policy.warmup_days},
        )
        return record
