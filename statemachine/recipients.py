"""Recipients known not to be on WhatsApp: the number check's result and the cache's rule. Pure.

The send path reads only the cache (never the provider): a recipient the provider said is absent,
within the cache's time to live, is refused at once with NOT_ON_WHATSAPP. An unknown one is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from statemachine.domain import Credentials, Reason


@dataclass(frozen=True, slots=True)
class NumberCheck:
    """One recipient's answer. `exists` None: the provider could not say (`failure`)."""

    recipient: str
    exists: bool | None
    canonical: str = ""  # the form WhatsApp has the number in (country code, Brazil's ninth digit)
    lid: str = ""
    failure: Reason | None = None
    detail: str = ""
    checked_at: datetime | None = None
    from_cache: bool = False


def fresh(check: NumberCheck, now: datetime, ttl: timedelta) -> bool:
    return check.exists is not None and check.checked_at is not None and now - check.checked_at < ttl


def known_absent(check: NumberCheck | None, now: datetime, ttl: timedelta) -> bool:
    return check is not None and check.exists is False and fresh(check, now, ttl)


@runtime_checkable
class NumberChecker(Protocol):
    """A provider that can tell whether a number is on WhatsApp (W-API: contacts/phone-exists)."""

    async def check_number(self, credentials: Credentials, phone: str, *, timeout: float) -> NumberCheck: ...


class RecipientCache(Protocol):
    """The number checks' cache (adapters/persistence/recipients.py)."""

    async def has_absent(self, instance_id: str) -> bool:
        """Whether any recipient of the instance is cached as absent (one index probe)."""
        ...

    async def get(self, instance_id: str, recipient: str) -> NumberCheck | None: ...

    async def absent_of(self, instance_id: str) -> dict[str, datetime]:
        """recipient -> checked_at of the instance's recipients cached as absent (a replica's first read)."""
        ...

    async def recipient_of(self, instance_id: str, provider_message_id: str) -> str | None:
        """The recipient of a message by the provider's id (a failure webhook names only that)."""
        ...

    async def checked_since(self, since: datetime, limit: int) -> list[tuple[str, NumberCheck]]:
        """Answers stored at or after `since` (indexed on checked_at), oldest first."""
        ...

    async def put(self, instance_id: str, check: NumberCheck) -> None: ...
