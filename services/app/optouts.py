"""Opt-outs: the suppression list's use cases, and what inbound messages teach the send side.

The preflight asks `blocks` for every send: whether the instance has any opt-out is one index
probe remembered for `refresh` seconds (at once on this replica when one is added here); an instance
with opt-outs pays one primary-key read. A customer's message that is exactly an opt-out keyword
(statemachine/optout.py) adds them; the API adds and removes, and every change is audited in the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from services.app.clock import utcnow
from services.app.send_policy import SendPolicies
from statemachine.errors import InvalidRequest
from statemachine.events import ProviderEvent, Route
from statemachine.optout import DEFAULT_KEYWORDS, OptOut, OptOutSource, OptOutStore, is_opt_out, keyword_set
from statemachine.validation import Violation, canonical_recipient, validate_instance_id

log = logging.getLogger("wapi_guard.optouts")


class OptOuts:
    def __init__(
        self,
        store: OptOutStore,
        *,
        keywords: Iterable[str] = DEFAULT_KEYWORDS,
        phone_region: str = "BR",
        refresh: float = 2.0,
    ) -> None:
        self.store = store
        self.keywords = keyword_set(keywords)
        self.phone_region = phone_region
        self.refresh = refresh
        # Per instance: whether it has any opt-out, and when that was read (one index probe per
        # instance per `refresh` seconds, whatever the size of the list).
        self._has_any: dict[str, tuple[bool, float]] = {}

    async def _any(self, instance_id: str) -> bool:
        known = self._has_any.get(instance_id)
        if known is None or time.monotonic() - known[1] >= self.refresh:
            if len(self._has_any) >= 100_000:
                self._has_any.clear()
            known = (await self.store.has_opt_outs(instance_id), time.monotonic())
            self._has_any[instance_id] = known
        return known[0]

    def _mark(self, instance_id: str) -> None:
        self._has_any[instance_id] = (True, time.monotonic())

    async def blocks(self, instance_id: str, recipient: str) -> bool:
        """True when `recipient` (canonical, as stored and sent) opted out of this instance."""
        if not await self._any(instance_id):
            return False
        return await self.store.is_suppressed(instance_id, recipient)

    async def note_message(self, instance_id: str, sender: str, text: str | None, at: datetime) -> bool:
        """A customer's message: an opt-out keyword adds them to the list (True when it did)."""
        if not sender or not is_opt_out(text, self.keywords):
            return False
        added = await self.store.add(
            OptOut(instance_id, sender, OptOutSource.KEYWORD, (text or "").strip()[:64], at, "customer")
        )
        self._mark(instance_id)
        if added:
            log.info("recipient opted out by keyword", extra={"instance_id": instance_id})
        return added

    def canonical(self, typed: str) -> str:
        recipient, problem = canonical_recipient(typed, self.phone_region)
        if problem or not recipient:
            raise InvalidRequest([Violation("recipient", problem or "required")])
        return recipient

    def _check(self, instance_id: str) -> None:
        if problems := validate_instance_id(instance_id):
            raise InvalidRequest(problems)

    async def add(self, instance_id: str, recipient: str, *, note: str, by: str) -> tuple[OptOut, bool]:
        self._check(instance_id)
        opt_out = OptOut(instance_id, self.canonical(recipient), OptOutSource.API, note[:256], utcnow(), by)
        added = await self.store.add(opt_out)
        self._mark(instance_id)
        log.info("opt-out added", extra={"instance_id": instance_id, "by": by, "added": added})
        return opt_out, added

    async def remove(self, instance_id: str, recipient: str, *, note: str, by: str) -> bool:
        self._check(instance_id)
        removed = await self.store.remove(instance_id, self.canonical(recipient), by=by, note=note, at=utcnow())
        log.info("opt-out removed", extra={"instance_id": instance_id, "by": by, "removed": removed})
        return removed

    async def list(self, instance_id: str, *, page_size: int, page_token: str) -> tuple[list[OptOut], str]:
        self._check(instance_id)
        if not 0 <= page_size <= 500:
            raise InvalidRequest([Violation("page_size", "must be between 0 and 500")])
        size = page_size or 100
        rows = await self.store.list(instance_id, limit=size, after=page_token[:128])
        return rows, rows[-1].recipient if len(rows) == size else ""


class InboundFacts(Protocol):
    """What the send side needs of a customer's message (the provider adapter's parse gives it)."""

    @property
    def sender_phone(self) -> str | None: ...

    @property
    def text(self) -> str | None: ...

    @property
    def is_group(self) -> bool: ...

    @property
    def from_me(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _StoredFacts:
    """InboundFacts read from the normalized message a provider's parser attached to its event."""

    sender_phone: str | None
    text: str | None
    is_group: bool
    from_me: bool

    @classmethod
    def of(cls, record: dict[str, Any]) -> _StoredFacts:
        return cls(
            record.get("sender_phone"),
            record.get("text"),
            record.get("is_group") is True,
            record.get("from_me") is True,
        )


def inbound_listener(
    parse: Callable[[bytes], InboundFacts | None], policies: SendPolicies | None, opt_outs: OptOuts | None
) -> Callable[[ProviderEvent, bytes, datetime], Awaitable[None]]:
    """Ingest's hook for each new inbound message: the sender becomes a known contact of the send
    policy, and an opt-out keyword puts them on the suppression list."""

    async def on_inbound(event: ProviderEvent, payload: bytes, at: datetime) -> None:
        if event.route is not Route.RECEIVED or not event.instance_id:
            return
        # The parser already normalized it (ProviderEvent.inbound); the body is re-read only for an
        # event without that form.
        message = _StoredFacts.of(event.inbound) if event.inbound is not None else parse(payload)
        if message is None or message.from_me or message.is_group or not message.sender_phone:
            return
        if policies is not None:
            await policies.note_inbound(event.instance_id, message.sender_phone, at)
        if opt_outs is not None:
            await opt_outs.note_message(event.instance_id, message.sender_phone, message.text, at)

    return on_inbound
