"""Engine factory: one AsyncEngine per process, created inside the running loop."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_URL = "sqlite+aiosqlite:///wapi-guard.db"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str = DEFAULT_URL, *, pool_size: int = 10, echo: bool = False) -> AsyncEngine:
    """SQLite: one connection, writes serialized with BEGIN IMMEDIATE (single process, WAL).

    PostgreSQL: a pool; JIT off (it slows short OLTP statements and the first ENUM lookups,
    asyncpg docs / MagicStack/asyncpg#727).
    """
    if is_sqlite(url):
        engine = create_async_engine(url, echo=echo, pool_size=1, max_overflow=0, pool_timeout=30)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let us emit BEGIN ourselves; pysqlite's implicit BEGIN is deferred (lock upgrades fail).
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            for pragma in (
                "PRAGMA journal_mode=WAL",
                "PRAGMA synchronous=NORMAL",
                "PRAGMA busy_timeout=10000",
                "PRAGMA foreign_keys=ON",
            ):
                cursor.execute(pragma)
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it costs a round-trip per checkout on the hot path. A dropped connection
        # fails its one request (UNAVAILABLE), is invalidated, and the pool reconnects.
        pool_pre_ping=False,
        pool_recycle=1800,
        # A connect attempt gives up after 5 s (asyncpg's default is 60): an outage answers
        # UNAVAILABLE quickly instead of holding every RPC.
        connect_args={"timeout": 5, "server_settings": {"jit": "off", "application_name": "wapi-guard"}},
    )
