"""Reads of the change log (its writes go with each state change, changelog.py)."""

from __future__ import annotations

from collections.abc import Sequence

from adapters.persistence import changelog
from adapters.persistence.store_base import StoreBase
from statemachine.changes import ChangeCursor, ChangeKind, ChangePage


class ChangeReads(StoreBase):
    """The change feed's reads."""

    async def read_changes(
        self,
        after: ChangeCursor | None,
        *,
        limit: int,
        instance_ids: Sequence[str] | None = None,
        kinds: Sequence[ChangeKind] | None = None,
    ) -> ChangePage:
        """Changes after `after` in commit-safe order (see changelog.py), with the cursor to resume from."""
        async with self._auto.connect() as conn:
            return await changelog.read(conn, after, limit=limit, instance_ids=instance_ids, kinds=kinds)

    async def head_change_cursor(self) -> ChangeCursor:
        async with self._auto.connect() as conn:
            return await changelog.head(conn)

    async def oldest_change_cursor(self) -> ChangeCursor:
        async with self._auto.connect() as conn:
            return await changelog.oldest(conn)

    async def change_log_identity(self) -> tuple[str, str]:
        async with self.transaction() as conn:
            return await changelog.identity(conn)
