"""Opt-outs: the suppression list's use cases, and what inbound messages teach the send side.

The preflight asks `blocks` for every send and is answered from memory: each replica keeps a copy of
the lists it was asked about (read once), follows the audit trail's new rows every `refresh` seconds
(one indexed query for every list; changes made on this replica apply at once). An instance's list
is its own, or a shared list it names (`optout_list` in its send policy row): a keyword from a
customer of any instance of the list, or an API add through any of them, suppresses the recipient
for all of them. A customer's message that is exactly an opt-out keyword
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
from statemachine.optout import (
    DEFAULT_KEYWORDS,
    OptOut,
    OptOutSource,
    OptOutStore,
    is_opt_out,
    keyword_set,
    list_key,
)
from statemachine.validation import Violation, canonical_recipient, validate_instance_id

log = logging.getLogger("wapi_guard.optouts")
_OVERLAP = 64  # audit ids re-read behind the tail (transactions that commit out of id order)
_CHANGES_PER_READ = 5_000


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
        # This replica's copy of the lists it has been asked about (list key -> recipients), kept
        # current by reading the audit trail's new rows every `refresh` seconds (one indexed query
        # for all lists) and at once for changes made here.
        self._members: dict[str, set[str]] = {}
        self._shared: dict[str, str] = {}  # instance id -> shared list name
        self._tail = 0
        self._read_at = float("-inf")

    async def _refresh(self) -> None:
        if time.monotonic() - self._read_at < self.refresh:
            return
        self._read_at = time.monotonic()
        self._shared = await self.store.shared_lists()
        if not self._members:
            self._tail = await self.store.last_change()
            return
        # Re-read a few ids before the tail: a concurrent transaction may commit a lower id later.
        changes = await self.store.changes_since(max(0, self._tail - _OVERLAP), _CHANGES_PER_READ)
        if not changes:
            return
        self._tail = max(self._tail, changes[-1][0])
        pairs = list({(key, recipient) for _, key, recipient in changes if key in self._members})
        present = await self.store.present(pairs)
        for key, recipient in pairs:
            if (key, recipient) in present:
                self._members[key].add(recipient)
            else:
                self._members[key].discard(recipient)
        if len(changes) == _CHANGES_PER_READ:
            self._read_at = float("-inf")  # more to read: the next send reads on

    def lists_changed(self) -> None:
        """An instance named another list here: re-read which list is whose on the next use."""
        self._read_at = float("-inf")

    def key(self, instance_id: str) -> str:
        """The list an instance's opt-outs go to and are read from."""
        return list_key(instance_id, self._shared.get(instance_id))

    async def _list(self, key: str) -> set[str]:
        members = self._members.get(key)
        if members is None:
            if not self._members:
                self._tail = await self.store.last_change()  # before the read: nothing is missed
            members = self._members[key] = await self.store.members(key)
        return members

    async def blocks(self, instance_id: str, recipient: str) -> bool:
        """True when `recipient` (canonical, as stored and sent) is on the instance's list (its own
        or the shared list it names). In memory; at most `refresh` seconds behind other replicas."""
        await self._refresh()
        return recipient in await self._list(self.key(instance_id))

    async def note_message(self, instance_id: str, sender: str, text: str | None, at: datetime) -> bool:
        """A customer's message: an opt-out keyword adds them to the list (True when it did)."""
        if not sender or not is_opt_out(text, self.keywords):
            return False
        await self._refresh()
        key = self.key(instance_id)
        added = await self.store.add(
            OptOut(key, sender, OptOutSource.KEYWORD, (text or "").strip()[:64], at, "customer")
        )
        (await self._list(key)).add(sender)
        if added:
            log.info("recipient opted out by keyword", extra={"instance_id": instance_id})
        return added

    async def warm(self, instance_id: str) -> None:
        """Reads the instance's list into this replica's copy (if not yet) and follows changes."""
        await self._refresh()
        await self._list(self.key(instance_id))

    def size_here(self, instance_id: str) -> int:
        """How many recipients are on the instance's list, in this replica's copy (0: not read yet)."""
        return len(self._members.get(self.key(instance_id), ()))

    async def size(self, instance_id: str) -> int:
        """How many recipients are on the instance's list."""
        await self._refresh()
        return await self.store.count(self.key(instance_id))

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
        await self._refresh()
        key = self.key(instance_id)
        opt_out = OptOut(key, self.canonical(recipient), OptOutSource.API, note[:256], utcnow(), by)
        added = await self.store.add(opt_out)
        (await self._list(key)).add(opt_out.recipient)
        log.info("opt-out added", extra={"instance_id": instance_id, "by": by, "added": added})
        return opt_out, added

    async def remove(self, instance_id: str, recipient: str, *, note: str, by: str) -> bool:
        self._check(instance_id)
        await self._refresh()
        key, canonical = self.key(instance_id), self.canonical(recipient)
        removed = await self.store.remove(key, canonical, by=by, note=note, at=utcnow())
        (await self._list(key)).discard(canonical)
        log.info("opt-out removed", extra={"instance_id": instance_id, "by": by, "removed": removed})
        return removed

    async def list(self, instance_id: str, *, page_size: int, page_token: str) -> tuple[list[OptOut], str]:
        self._check(instance_id)
        if not 0 <= page_size <= 500:
            raise InvalidRequest([Violation("page_size", "must be between 0 and 500")])
        size = page_size or 100
        await self._refresh()
        rows = await self.store.list(self.key(instance_id), limit=size, after=page_token[:128])
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
