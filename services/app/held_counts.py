"""Held messages per instance for the lists (ListInstances, the CLI's `instances`, the status page):
one grouped count over the held rows of every listed instance (docs/holds.md). The held rows exist
only while messages are held, so the cost follows the backlog, never the history."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

TOP_REASONS = 5


class HeldCountStore(Protocol):
    async def counts_by_instance(self, instance_ids: Sequence[str] | None) -> dict[str, Counter[str]]: ...


@dataclass(frozen=True, slots=True)
class Held:
    """One instance's held messages: how many, and the reasons they wait for (most first)."""

    count: int = 0
    reasons: tuple[tuple[str, int], ...] = ()

    @property
    def top_reason(self) -> str:
        return self.reasons[0][0] if self.reasons else ""


NONE_HELD = Held()


def held_of(counts: Counter[str] | None) -> Held:
    if not counts:
        return NONE_HELD
    # most_common ties keep insertion order: sort by (-count, reason) so the answer is stable.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return Held(sum(counts.values()), tuple(ranked[:TOP_REASONS]))


class HeldCounts:
    def __init__(self, store: HeldCountStore) -> None:
        self.store = store

    async def of(self, instance_ids: Sequence[str] | None) -> dict[str, Held]:
        """Held messages of the instances listed (None: of every instance), one query. An instance
        without held messages is absent (read it as NONE_HELD)."""
        if instance_ids is not None and not instance_ids:
            return {}
        counts = await self.store.counts_by_instance(instance_ids)
        return {instance_id: held_of(c) for instance_id, c in counts.items()}
