"""Postgres fast lane for the hot writes: one raw asyncpg statement per batch, arrays bound whole.

Why: profiles of the benchmark showed a blocked send spending ~200 µs of the server's
single core in SQLAlchemy per INSERT (pool checkout ~120 µs, per-row parameter processing, result
wrapping), and a status webhook five round-trips (BEGIN, SELECT … FOR UPDATE, INSERT, UPDATE,
COMMIT). Here each batch is one prepared statement over `unnest()` arrays on a connection leased
from the same SQLAlchemy pool and kept while the lane is busy. The rules stay in `statemachine`:
these statements only store what Python decided, guarded by compare-and-set.

Errors are re-raised as SQLAlchemy `DBAPIError`s (with the asyncpg error as `orig`), so callers
and the group-commit batcher treat both lanes alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from adapters.persistence import history

# Row-specific SQLSTATE classes: data exception, integrity violation. Anything else coming from
# the connection (closed, protocol, timeout) means the connection cannot be trusted any more.
_ROW_CLASSES = ("22", "23")


# Change-log rows bound as arrays (changelog.ROW_COLUMNS order), kept for the messages the
# statement actually wrote, in the order they were decided. Built at import from constants only.
def _log_insert(first: int, written: str) -> str:
    p = [f"${first + n}" for n in range(6)]
    return f"""INSERT INTO change_log (event_id, kind, instance_id, message_id, occurred_at, payload)
  SELECT l.event_id, l.kind, l.instance_id, l.message_id, l.occurred_at, l.payload
  FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], {p[4]}::timestamptz[], {p[5]}::text[])
       WITH ORDINALITY AS l(event_id, kind, instance_id, message_id, occurred_at, payload, ord)
  WHERE l.message_id IN (SELECT id FROM {written})
  ORDER BY l.ord"""  # noqa: S608


# The messages row as the fast lane binds it: one array per column, in this order (the
# message store (messages.py) builds its arrays from these names, so the two cannot drift apart).
MESSAGE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("instance_id", "text"),
    ("idempotency_key", "text"),
    ("request_hash", "text"),
    ("recipient", "text"),
    ("kind", "text"),
    ("content", "text"),
    ("state", "text"),
    ("failure_reason", "text"),
    ("failure_detail", "text"),
    ("provider_message_id", "text"),
    ("attempts", "int"),
    ("history", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("sent_at", "timestamptz"),
    ("stuck_at", "timestamptz"),
    ("trace_id", "text"),
    ("span_id", "text"),
    ("version", "int"),
    ("queue_id", "text"),
)
_NAMES = ", ".join(name for name, _ in MESSAGE_COLUMNS)
_ARRAYS = ", ".join(f"${n}::{kind}[]" for n, (_, kind) in enumerate(MESSAGE_COLUMNS, start=1))

INSERT_MESSAGES = f"""
WITH ins AS (
  INSERT INTO messages ({_NAMES})
  SELECT * FROM unnest({_ARRAYS})
  ORDER BY 2, 3
  ON CONFLICT (instance_id, idempotency_key) DO NOTHING
  RETURNING id
),
log AS ({_log_insert(len(MESSAGE_COLUMNS) + 1, "ins")})
SELECT id FROM ins
"""  # noqa: S608 - composed at import from constants

# PENDING → SENT for a batch of sends the provider accepted; compare-and-set on version and state.
MARK_SENT = f"""
WITH upd AS (
  UPDATE messages m
  SET state = 'SENT', provider_message_id = u.provider_message_id, sent_at = u.at, updated_at = u.at,
      history = {history.append_sql("m.history", "u.entries")}, version = m.version + 1
  FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::text[])
       AS u(id, version, provider_message_id, at, entries)
  WHERE m.id = u.id AND m.version = u.version AND m.state = 'PENDING'
  RETURNING m.id
),
log AS ({_log_insert(6, "upd")})
SELECT id FROM upd
"""  # noqa: S608 - composed at import from constants

# Parked statuses waiting for these provider ids (run after MARK_SENT has committed).
PARKED_FOR = """
SELECT DISTINCT instance_id, provider_message_id FROM events
WHERE parked AND provider_message_id = ANY($1::text[])
"""

# What a status decision needs, for many provider message ids at once. By provider id alone (the
# caller matches the instance): a join on (instance_id, provider_message_id) lets the planner AND
# the instance index in, which reads every message of a busy instance (measured: 2x Postgres CPU).
READ_FOR_STATUS = """
SELECT m.id, m.instance_id, m.provider_message_id, m.state, m.version, m.sent_at, m.trace_id, m.span_id,
       m.recipient, m.attempts, m.created_at, m.failure_reason, m.failure_detail, i.reason AS instance_reason
FROM messages m
JOIN instances i ON i.id = m.instance_id
WHERE m.provider_message_id = ANY($1::text[])
"""

# One atomic statement for a status plan (statemachine/status_plan.py, written by
# status_lane.PgStatusStatements): lock the messages whose version is still the one the plan was
# made on; store the events (a status whose message moved is not stored, the caller re-plans it);
# apply each message's update only if its event was stored (not a re-delivery), appending its
# history entries in SQL (history.append_sql).
APPLY_STATUSES = f"""
WITH cas AS MATERIALIZED (
  SELECT m.id FROM messages m
  JOIN unnest($13::text[], $14::int[]) AS c(id, version) ON m.id = c.id AND m.version = c.version
  ORDER BY m.id
  FOR UPDATE OF m
),
ins AS (
  INSERT INTO events (id, dedupe_key, received_at, route, reason, instance_id, provider_message_id, status,
                      parked, payload, headers, duplicates)
  SELECT e.id, e.dedupe_key, e.received_at, e.route, e.reason, e.instance_id, e.provider_message_id, e.status,
         e.parked, e.payload, e.headers, 0
  FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[],
              $8::text[], $9::bool[], $10::bytea[], $11::text[], $12::text[])
       AS e(id, dedupe_key, received_at, route, reason, instance_id, provider_message_id, status, parked,
            payload, headers, message_id)
  WHERE e.message_id IS NULL OR e.message_id IN (SELECT id FROM cas)
  ORDER BY e.dedupe_key
  ON CONFLICT (dedupe_key) DO NOTHING
  RETURNING id
),
upd AS (
  UPDATE messages m
  SET state = u.state, failure_reason = u.failure_reason, failure_detail = u.failure_detail,
      history = {history.append_sql("m.history", "u.entries")},
      updated_at = u.updated_at, version = u.to_version
  FROM unnest($13::text[], $14::int[], $15::int[], $16::text[], $17::text[], $18::text[], $19::text[],
              $20::timestamptz[], $21::text[])
       AS u(id, from_version, to_version, state, failure_reason, failure_detail, entries, updated_at, event_id)
  WHERE m.id = u.id AND m.version = u.from_version AND u.event_id IN (SELECT id FROM ins)
  RETURNING m.id
),
log AS ({_log_insert(22, "upd")})
SELECT (SELECT coalesce(array_agg(id), '{{}}') FROM cas) AS locked,
       (SELECT coalesce(array_agg(id), '{{}}') FROM ins) AS stored,
       (SELECT count(*) FROM upd) AS updated
"""  # noqa: S608 - composed at import from constants


def _from_driver(error: BaseException) -> bool:
    """asyncpg's own errors (not all derive from its PostgresError / InterfaceError, e.g.
    InternalClientError after the server dropped the connection) and socket-level ones."""
    return isinstance(error, (OSError, TimeoutError)) or type(error).__module__.split(".")[0] == "asyncpg"


def as_dbapi_error(error: BaseException, statement: str) -> DBAPIError:
    """asyncpg's exception as the SQLAlchemy class the rest of the code already handles."""
    sqlstate = str(getattr(error, "sqlstate", "") or "")
    cls: type[DBAPIError]
    if sqlstate.startswith("23"):
        cls = IntegrityError
    elif sqlstate.startswith("22"):
        cls = DataError
    elif sqlstate:
        cls = DBAPIError
    else:
        cls = OperationalError
    return cls(statement.strip().split("\n", 1)[0][:120], None, error)


class Lease:
    """One pooled connection held while a hot lane is busy and handed back after `idle` seconds.

    Checking a connection out of the SQLAlchemy pool and back costs ~120 µs (measured); under load
    a lane now pays it once, at rest the connection returns to the pool. One user at a time (the
    lanes are group-commit batchers: one batch in flight each). A connection-level error drops
    the connection (invalidated, never reused); the next call checks out a fresh one.
    """

    def __init__(self, engine: AsyncEngine, *, idle: float = 2.0) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._idle = idle
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._lock = asyncio.Lock()
        self._last_used = 0.0
        self._release: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def driver(self, statement: str) -> AsyncIterator[Any]:
        """The raw asyncpg connection; errors come out as SQLAlchemy DBAPIErrors."""
        async with self._lock:
            if self._conn is None:
                conn = await self._engine.connect()
                try:
                    self._driver = (await conn.get_raw_connection()).driver_connection
                except BaseException:
                    await conn.close()
                    raise
                self._conn = conn
            try:
                yield self._driver
            except asyncio.CancelledError:
                await self._drop()  # a statement cut mid-flight leaves the protocol state unknown
                raise
            except Exception as error:
                if not _from_driver(error):
                    raise
                sqlstate = str(getattr(error, "sqlstate", "") or "")
                if sqlstate[:2] not in _ROW_CLASSES:
                    await self._drop()
                raise as_dbapi_error(error, statement) from error
            finally:
                self._last_used = time.monotonic()
                if self._conn is not None and self._release is None:
                    self._release = asyncio.get_running_loop().call_later(self._idle, self._maybe_release)

    def _maybe_release(self) -> None:
        self._release = None
        if self._conn is None:
            return
        if self._lock.locked() or time.monotonic() - self._last_used < self._idle:
            self._release = asyncio.get_running_loop().call_later(self._idle, self._maybe_release)
            return
        task = asyncio.get_running_loop().create_task(self.aclose())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _drop(self) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            try:
                await conn.invalidate()
                await conn.close()
            except Exception:  # noqa: S110 - the connection is being thrown away
                pass

    async def aclose(self) -> None:
        """Returns the connection to the pool (at idle, and before the engine is disposed)."""
        async with self._lock:
            if self._release is not None:
                self._release.cancel()
                self._release = None
            conn, self._conn, self._driver = self._conn, None, None
            if conn is not None:
                await conn.close()
