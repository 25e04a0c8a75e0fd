"""Engine factory: one AsyncEngine per process, created inside the running loop."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

DEFAULT_URL = "sqlite+aiosqlite:///wapi-guard.db"

ACCEPTED_URLS = (
    "use postgresql+asyncpg://user:password@host:5432/database or sqlite+aiosqlite:///path/to/file.db "
    "(postgresql://, postgres://, postgresql+psycopg:// and sqlite:// are read as these)"
)
# What the common spellings mean: SQLAlchemy's default (sync) drivers are not installed, the async
# ones the project ships are. Only these drivers are rewritten; an unknown one is refused.
_POSTGRES_SCHEMES = {"postgresql", "postgres"}
_POSTGRES_DRIVERS = {"", "asyncpg", "psycopg", "psycopg2", "psycopg_async", "pg8000"}
_SQLITE_DRIVERS = {"", "pysqlite", "aiosqlite"}


class DatabaseUrlError(ValueError):
    """A database URL the project cannot use; the message names the accepted forms, never the password."""


def async_url(url: str) -> str:
    """The URL on the async driver the project ships: `postgresql://`, `postgres://` and
    `postgresql+psycopg://` become `postgresql+asyncpg://` (libpq's `sslmode` becomes asyncpg's
    `ssl`), `sqlite://` becomes `sqlite+aiosqlite://`. Anything else raises DatabaseUrlError, one
    line that names the scheme (never the rest of the URL: it may hold a password)."""
    text = url.strip()
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        raise DatabaseUrlError(f"the database URL is not a URL: {ACCEPTED_URLS}") from None
    scheme, _, driver = parsed.drivername.partition("+")
    if scheme in _POSTGRES_SCHEMES and driver in _POSTGRES_DRIVERS:
        return _render(_libpq_ssl(parsed.set(drivername="postgresql+asyncpg")))
    if scheme == "sqlite" and driver in _SQLITE_DRIVERS:
        return _render(parsed.set(drivername="sqlite+aiosqlite"))
    raise DatabaseUrlError(f"database URL scheme {parsed.drivername!r} is not supported: {ACCEPTED_URLS}")


def _libpq_ssl(parsed: URL) -> URL:
    """`?sslmode=require` (libpq, psycopg, Heroku-style URLs) is `?ssl=require` for asyncpg."""
    if "sslmode" not in parsed.query:
        return parsed
    query = dict(parsed.query)
    mode = query.pop("sslmode")
    query.setdefault("ssl", mode)
    return parsed.set(query=query)


def _render(parsed: URL) -> str:
    return parsed.render_as_string(hide_password=False)


class _SqliteConnection(aiosqlite.Connection):
    """aiosqlite's worker thread ends with the first stop(). SQLAlchemy, when a task is cancelled
    twice during a statement, asks for a forced stop and a graceful close at once; aiosqlite's
    close() then drops the connection before the queued stop could close it (the file stays
    write-locked) and queues a second stop that no thread runs (its future never resolves: the
    task was left pending forever and shutdown hung on it). Here a close or stop after the first
    stop leaves the closing to that first stop."""

    async def close(self) -> None:
        if not self._running:
            return
        await super().close()

    def stop(self) -> asyncio.Future[Any] | None:
        if not self._running:
            return None
        return super().stop()


class _ClosingConnection(sqlite3.Connection):
    """Closes its open cursors when closed. A statement cancelled before its rows were read keeps
    its cursor alive in a reference cycle, and sqlite3 closes a connection with a live statement
    only when that statement is finalized: until the garbage collector ran, the file stayed
    write-locked and every other connection waited out its busy timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def cursor(self, factory: Any = None) -> Any:
        made = super().cursor() if factory is None else super().cursor(factory)
        self._cursors.add(made)
        return made

    def close(self) -> None:
        for cursor in list(self._cursors):
            with contextlib.suppress(sqlite3.Error):
                cursor.close()
        super().close()


def _sqlite_creator(url: str) -> Any:
    """Connects as aiosqlite.connect() does, with the two connection classes above."""
    database = make_url(url).database or ":memory:"

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, factory=_ClosingConnection)

    def create() -> _SqliteConnection:
        connection = _SqliteConnection(connector, 64)
        # As SQLAlchemy does for its own: a connection never closed must not keep the process alive.
        connection._thread.daemon = True
        return connection

    return create


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(
    url: str = DEFAULT_URL,
    *,
    pool_size: int = 10,
    echo: bool = False,
    connect_timeout: float = 5.0,
    pool_timeout: float = 30.0,
    statement_timeout: float | None = None,
) -> AsyncEngine:
    """SQLite: one connection, writes serialized with BEGIN IMMEDIATE (single process, WAL).

    PostgreSQL: a pool; JIT off (it slows short OLTP statements and the first ENUM lookups,
    asyncpg docs / MagicStack/asyncpg#727). `connect_timeout` bounds opening a connection (asyncpg's
    default is 60 s), `pool_timeout` waiting for a pooled one (PostgreSQL), `statement_timeout`
    (None: no limit; PostgreSQL only) every statement twice: on the server (`statement_timeout`,
    the backend stops working) and in asyncpg (`command_timeout`, for a server that does not
    answer at all). `url` may be any spelling `async_url` accepts.
    """
    url = async_url(url)
    if is_sqlite(url):
        return _sqlite_engine(url, echo=echo)
    server_settings = {"jit": "off", "application_name": "wapi-guard"}
    connect_args: dict[str, Any] = {"timeout": connect_timeout, "server_settings": server_settings}
    if statement_timeout:
        server_settings["statement_timeout"] = str(int(statement_timeout * 1000))
        connect_args["command_timeout"] = statement_timeout
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        # No pre-ping: it costs a round-trip per checkout on the hot path. A dropped connection
        # fails its one request (UNAVAILABLE), is invalidated, and the pool reconnects.
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _sqlite_engine(url: str, *, echo: bool) -> AsyncEngine:
    """One connection, BEGIN IMMEDIATE for every transaction, WAL (see create_engine)."""
    # One connection for every user: background loops queue for it too, so its wait stays long.
    engine = create_async_engine(
        url, echo=echo, pool_size=1, max_overflow=0, pool_timeout=30, async_creator=_sqlite_creator(url)
    )

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
