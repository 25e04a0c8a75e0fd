"""Opt-outs: does a customer's message ask to stop? Pure.

The whole message must be one of the keywords (not a word inside a sentence: "não quero sair
de casa" is not an opt-out), compared without case, accents, surrounding spaces or punctuation,
so "Sair", "sáir!", " PARAR. " and "stop" all match.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

DEFAULT_KEYWORDS = ("SAIR", "PARAR", "STOP", "CANCELAR")
_PUNCTUATION = " \t\r\n.,;:!?¡¿'\"“”‘’«»()[]{}-_*~"


def fold(text: str) -> str:
    """Case- and accent-insensitive form: NFKD, combining marks dropped, casefolded, trimmed."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return bare.casefold().strip(_PUNCTUATION)


def keyword_set(keywords: Iterable[str]) -> frozenset[str]:
    return frozenset(f for k in keywords if (f := fold(k)))


def is_opt_out(text: str | None, keywords: frozenset[str]) -> bool:
    """True when the whole message is one of the (folded) keywords."""
    if not text or len(text) > 64:
        return False
    return fold(text) in keywords


SHARED_PREFIX = "list:"  # the key of a shared list in the store (an instance's own list: its id)


def list_key(instance_id: str, shared: str | None) -> str:
    """Where an instance's opt-outs live: the shared list it names, else its own."""
    return f"{SHARED_PREFIX}{shared}" if shared else instance_id


def list_name_problem(name: str) -> str:
    """Why `name` cannot name a shared list ('' when it can)."""
    if len(name) > 58:
        return "at most 58 characters"
    if name and not all(ch.isalnum() or ch in "-_." for ch in name):
        return "letters, digits, '-', '_' and '.' only"
    return ""


class OptOutSource(StrEnum):
    KEYWORD = "KEYWORD"  # the customer's own message matched a keyword
    API = "API"  # added over gRPC (a CRM's own opt-out, a complaint…)


@dataclass(frozen=True, slots=True)
class OptOut:
    instance_id: str
    recipient: str
    source: OptOutSource
    detail: str  # the matching message (keyword) or the caller's note (API)
    created_at: datetime
    created_by: str


class OptOutStore(Protocol):
    """The suppression list's port (adapters/persistence/optouts.py). Every change is audited."""

    async def has_opt_outs(self, instance_id: str) -> bool:
        """Whether the instance has any (one index probe)."""
        ...

    async def is_suppressed(self, instance_id: str, recipient: str) -> bool: ...

    async def members(self, key: str) -> set[str]:
        """Every recipient of one list (`key`: an instance id, or `list_key(name)` of a shared list)."""
        ...

    async def last_change(self) -> int:
        """The newest audit id (0: none)."""
        ...

    async def changes_since(self, after_id: int, limit: int) -> list[tuple[int, str, str]]: ...

    async def present(self, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]: ...

    async def shared_lists(self) -> dict[str, str]:
        """instance id -> the shared list it names."""
        ...

    async def count(self, key: str) -> int: ...

    async def add(self, opt_out: OptOut) -> bool:
        """True when it was not there yet (an audit row is written either way only when added)."""
        ...

    async def remove(self, instance_id: str, recipient: str, *, by: str, note: str, at: datetime) -> bool: ...

    async def list(self, instance_id: str, *, limit: int, after: str) -> list[OptOut]: ...
