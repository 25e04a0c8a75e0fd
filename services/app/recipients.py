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
from datetime import datetime, timedelta
from typing import Any

from services.app.clock import utcnow
from services.app.health import Instances
from statemachine.domain import Credentials, Reason
from statemachine.errors import InstanceNotFound, InvalidRequest
from statemachine.recipients import NumberCheck, NumberChecker, RecipientCache, fresh
from statemachine.validation import Violation, canonical_recipient, validate_instance_id

_LAG = timedelta(seconds=5)  # how far back each refresh re-reads (writes that commit late)
_ROWS_PER_READ = 5_000


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
        # This replica's copy of the recipients known absent (instance -> recipient -> checked at),
        # for the instances it was asked about; answers stored since the last read are read every
        # `refresh` seconds (one indexed query for all instances), answers learned here at once.
        self._absent: dict[str, dict[str, datetime]] = {}
        self._since: datetime | None = None
        self._read_at = float("-inf")
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def _refresh(self) -> None:
        if time.monotonic() - self._read_at < self.refresh:
            return
        self._read_at = time.monotonic()
        started = utcnow()
        if self._since is None or not self._absent:
            self._since = started - _LAG
            return
        rows = await self.cache.checked_since(self._since, _ROWS_PER_READ)
        for instance_id, answer in rows:
            absent = self._absent.get(instance_id)
            if absent is None or answer.checked_at is None:
                continue
            if answer.exists is False:
                absent[answer.recipient] = answer.checked_at
            else:
                absent.pop(answer.recipient, None)
        if len(rows) == _ROWS_PER_READ and rows[-1][1].checked_at is not None:
            self._since = rows[-1][1].checked_at
            self._read_at = float("-inf")
        else:
            # Re-read a little of the past: a concurrent write may commit an older timestamp later.
            self._since = started - _LAG

    async def absent(self, instance_id: str, recipient: str) -> bool:
        """The preflight's question: does the cache say this recipient is not on WhatsApp? In memory;
        at most `refresh` seconds behind what other replicas learn."""
        await self._refresh()
        absent = self._absent.get(instance_id)
        if absent is None:
            if not self._absent:
                self._since = utcnow() - _LAG  # before the read: nothing is missed
            absent = self._absent[instance_id] = await self.cache.absent_of(instance_id)
        checked_at = absent.get(recipient)
        return checked_at is not None and utcnow() - checked_at < self.ttl

    def known_absent_here(self, instance_id: str, recipient: str) -> bool:
        """This replica's copy only (no I/O): for the stall watch, which must not count a send to a
        recipient known not to be on WhatsApp as evidence against the session."""
        checked_at = self._absent.get(instance_id, {}).get(recipient)
        return checked_at is not None and utcnow() - checked_at < self.ttl

    async def learn_absent_by_provider_id(self, instance_id: str, provider_message_id: str) -> None:
        """A provider's failure webhook for one of its message ids said "not on WhatsApp"."""
        recipient = await self.cache.recipient_of(instance_id, provider_message_id)
        if recipient is not None and recipient.isdigit():
            await self.learn_absent(instance_id, recipient)

    async def learn_absent(self, instance_id: str, recipient: str) -> None:
        """A send's failure said the recipient is not on WhatsApp: the next send is refused at once."""
        now = utcnow()
        await self.cache.put(instance_id, NumberCheck(recipient, False, checked_at=now))
        if instance_id in self._absent:
            self._absent[instance_id][recipient] = now

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
                if instance_id in self._absent and answer.checked_at is not None:
                    if answer.exists is False:
                        self._absent[instance_id][recipient] = answer.checked_at
                    else:
                        self._absent[instance_id].pop(recipient, None)
                out.append(answer)
        return out
