"""What every aggregate's store shares: the engine, its autocommit twin, the dialect, and the
transaction. Short transactions; every state change is compare-and-set.

Row locks: Postgres takes `SELECT … FOR UPDATE` on the row it is about to change; SQLite has no
row locks, so its engine serializes writers with BEGIN IMMEDIATE (see db.py). The version
column is checked on every UPDATE either way, so a lost race can never be silently overwritten.

Each aggregate's store (instances.py, messages.py, …) is a subclass with cooperative `__init__`
and `aclose`: it can be built alone over an engine, and `store.Repository` combines them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class StoreBase:
    # The store's own exceptions, as the ports name them (statemachine.ports).
    transient_errors: tuple[type[Exception], ...] = (DBAPIError,)
    unavailable_errors: tuple[type[Exception], ...] = (DBAPIError, SQLAlchemyError)

    def __init__(self, engine: AsyncEngine, *, group_commit_window: float = 0.0) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        # Single statements need no BEGIN/COMMIT round-trips: reads and one-statement writes
        # (each atomic on its own) run in autocommit; multi-statement units use transaction().
        self._auto = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Postgres: the group-commit lanes write through raw asyncpg (see pg_fast), one leased
        # connection each.
        self._pg = self._dialect == "postgresql"

    async def aclose(self) -> None:
        """Hands leased connections back to the pool (before the engine is disposed)."""

    def _insert(self, table: Any) -> Any:
        module = postgresql if self._pg else sqlite
        return module.insert(table)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(select(1))
