"""Recipients known not to be on WhatsApp: CheckRecipients (the provider's number check, paced,
cached with a TTL) and the preflight's cache read (services/app/sending.py). The send path never
calls the provider: a recipient the cache says is absent is refused with NOT_ON_WHATSAPP.

Bulk number checks can themselves get a number banned (evolution-api #2228), so checks of one
instance go one at a time, `pace` seconds apart, at most `max_batch` per request, and a fresh
cached answer is never asked again.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from typing import Any

from services.app.clock import utcnow
from services.app.health import Instances
from statemachine.domain import Credentials, Reason
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.recipients import NumberCheck, NumberChecker, RecipientCache, fresh, known_absent
from statemachine.validation import Violation, canonical_recipient, validate_instance_id


class Recipients:
    def __init__(
        self,
        cache: RecipientCache,
        provider: Any,
        instances: Instances,
        *,
        ttl_seconds: float = 30 * 86400,
        phone_region: str = "BR",
        timeout: float = 10.0,
        pace: float = 0.2,
        max_batch: int = 50,
        refresh: float = 2.0,
    ) -> None:
        self.cache = cache
        self.checker: NumberChecker | None = provider if isinstance(provider, NumberChecker) else None
        self.instances = instances
        self.ttl = timedelta(seconds=ttl_seconds)
        self.phone_region = phone_region
        self.timeout = timeout
        self.pace = pace
        self.max_batch = max_batch
        self.refresh = refresh
        # Per instance: whether any recipient is cached absent, and when that was read.
        self._has_absent: dict[str, tuple[bool, float]] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def absent(self, instance_id: str, recipient: str) -> bool:
        """The preflight's question: does the cache say this recipient is not on WhatsApp?"""
        known = self._has_absent.get(instance_id)
        if known is None or time.monotonic() - known[1] >= self.refresh:
            if len(self._has_absent) >= 100_000:
                self._has_absent.clear()
            known = (await self.cache.has_absent(instance_id), time.monotonic())
            self._has_absent[instance_id] = known
        if not known[0]:
            return False
        return known_absent(await self.cache.get(instance_id, recipient), utcnow(), self.ttl)

    async def check(self, instance_id: str, phones: list[str]) -> list[NumberCheck]:
        if problems := validate_instance_id(instance_id):
            raise InvalidRequest(problems)
        if not phones or len(phones) > self.max_batch:
            raise InvalidRequest([Violation("recipients", f"give 1 to {self.max_batch} numbers per request")])
        cached = await self.instances.cached(instance_id)
        if cached is None:
            raise InstanceNotFound(instance_id)
        credentials = Credentials(instance_id, cached.token)
        out: list[NumberCheck] = []
        async with self._locks[instance_id]:  # one instance's checks go one at a time
            asked = 0
            for typed in phones:
                recipient, problem = canonical_recipient(typed, self.phone_region)
                if problem or not recipient:
                    out.append(NumberCheck(typed, None, failure=Reason.INVALID_ARGUMENT, detail=problem or "empty"))
                    continue
                hit = await self.cache.get(instance_id, recipient)
                if hit is not None and fresh(hit, utcnow(), self.ttl):
                    out.append(replace(hit, from_cache=True))
                    continue
                if self.checker is None:
                    out.append(NumberCheck(recipient, None, failure=Reason.PROVIDER_ERROR, detail="no number check"))
                    continue
                if asked:
                    await asyncio.sleep(self.pace)
                asked += 1
                answer = await self.checker.check_number(credentials, recipient, timeout=self.timeout)
                answer = replace(answer, recipient=recipient, checked_at=utcnow())
                await self.cache.put(instance_id, answer)
                if answer.exists is False:
                    self._has_absent[instance_id] = (True, time.monotonic())
                out.append(answer)
        return out
