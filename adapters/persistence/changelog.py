"""The change log: the one row builder, the append on a transaction, and the commit-safe read.

Why the read is shaped like this: `seq` is handed out when a row is inserted, not when its
transaction commits, so on PostgreSQL a reader that simply followed `seq` would skip a row whose
long transaction committed after a later one. Every row carries the writing transaction's id
(`xid8`) and readers only look below the horizon: the oldest transaction still running in
*this* database (`_HORIZON_PG`): everything below it has committed or rolled back for good, or
belongs to another database and cannot have written here, so the (xid, seq) order below the
horizon never gains a row behind a reader. SQLite has one writer at a time, so `seq` is commit
order and `xid` is 0.

Why not plain `pg_snapshot_xmin`: transaction ids are cluster-wide, so another database's open
writing transaction (a colleague's test, a bulk load) held every reader of this log back until it
ended — a feed follower saw changes 8-30 s late, and a test waiting 30 s saw 3 of 4. An in-progress
id of the snapshot is skipped only while `pg_stat_activity` shows it running in another database
(a backend never changes database); one that ended meanwhile, or whose database cannot be seen
(another role's session without pg_read_all_stats), still holds the horizon: never a skip.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from ulid import ULID

from adapters.inbound import with_message
from adapters.persistence.schema import UTCDateTime, change_log, change_log_identity
from statemachine.changes import START, Change, ChangeCursor, ChangeKind, ChangePage, ChangeRecord

MAX_PAGE = 1000
# PostgreSQL: every transaction that appended to the log NOTIFYs this channel on commit (trigger
# of migration 0003). A wake-up only, with an empty payload: the log is the truth.
CHANGES_CHANNEL = "wapiguard_changes"

# Columns a fast lane binds as arrays, in this order (see pg_fast).
ROW_COLUMNS = ("event_id", "kind", "instance_id", "message_id", "occurred_at", "payload")


def new_event_id() -> str:
    """A ULID (48 bits of milliseconds, 80 random bits) in hex: unique like a UUID4, but new ids
    go to the right edge of the `event_id` unique index instead of a random old leaf (a random
    key cost a full-page image in the WAL for most change rows after each checkpoint)."""
    return "evt_" + bytes(ULID()).hex()


def change_row(change: Change) -> dict[str, Any]:
    """The one row format of the table, for every write path. orjson writes aware datetimes as
    ISO 8601 (`2026-12-01T12:00:00.123456+00:00`, what isoformat() gives) at a tenth of the
    stdlib encoder's cost."""
    return {
        "event_id": new_event_id(),
        "kind": change.kind.value,
        "instance_id": change.instance_id,
        "message_id": change.message_id,
        "occurred_at": change.occurred_at,
        "payload": _json(change.payload),
    }


def _json(payload: Any) -> str:
    try:
        return orjson.dumps(payload).decode()
    except orjson.JSONEncodeError:
        # A webhook body may hold what orjson refuses (integers beyond 64 bits, lone surrogates
        # from `\ud800` escapes): the stdlib writes it (datetimes as isoformat, the same text),
        # escaped to ASCII so a lone surrogate stays an escape and the text stays storable.
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=True, default=_isoformat)


def _isoformat(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def as_columns(rows: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Rows as one array per column (ROW_COLUMNS order), for `unnest()` in a fast lane."""
    return [[row[name] for row in rows] for name in ROW_COLUMNS]


async def append(conn: AsyncConnection, changes: Iterable[Change]) -> None:
    """Appends inside the caller's transaction (the one that makes the change)."""
    await append_rows(conn, [change_row(c) for c in changes])


async def append_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(change_log.insert(), list(rows))


_INBOUND_KINDS = frozenset({ChangeKind.MESSAGE_RECEIVED.value, ChangeKind.MESSAGE_FROM_PHONE.value})


def _payload(kind: str, raw: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(raw)
    return with_message(payload) if kind in _INBOUND_KINDS else payload


def _filters(instance_ids: Sequence[str] | None, kinds: Sequence[ChangeKind] | None) -> tuple[str, dict[str, Any]]:
    sql, params = "", dict[str, Any]()
    if instance_ids is not None:
        names = [f"i{n}" for n in range(len(instance_ids))]
        sql += f" AND instance_id IN ({', '.join(':' + n for n in names) or 'NULL'})"
        params.update(zip(names, instance_ids, strict=True))
    if kinds is not None:
        names = [f"k{n}" for n in range(len(kinds))]
        sql += f" AND kind IN ({', '.join(':' + n for n in names) or 'NULL'})"
        params.update(zip(names, (ChangeKind(k).value for k in kinds), strict=True))
    return sql, params


_COLUMNS = (
    "c.seq, c.xid_text, c.event_id, c.kind, c.instance_id, c.message_id, c.occurred_at, c.payload,"
    " (SELECT i.provider FROM instances i WHERE i.id = c.instance_id) AS provider"
)

# The horizon of a snapshot: its oldest in-progress transaction id, leaving out those running in
# another database right now (they cannot write here); its xmax when none is left.
_HORIZON_PG = """coalesce(
    (SELECT min(x) FROM pg_snapshot_xip(s.snap) AS x
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                       WHERE a.backend_xid = x::xid AND a.datname <> current_database())),
    pg_snapshot_xmax(s.snap))"""

# One statement: the horizon and the page come from the same snapshot. The LEFT JOIN keeps the
# horizon row when no change is visible.
_READ_PG = f"""
WITH h AS MATERIALIZED (SELECT {_HORIZON_PG} AS horizon FROM (SELECT pg_current_snapshot() AS snap) s)
SELECT h.horizon::text AS horizon, {{columns}}
FROM h
LEFT JOIN LATERAL (
  SELECT seq, xid::text AS xid_text, event_id, kind, instance_id, message_id, occurred_at, payload
  FROM change_log
  WHERE (xid, seq) > (CAST(:xid AS text)::xid8, :seq) AND xid < h.horizon{{filters}}
  ORDER BY xid, seq
  LIMIT :limit
) c ON true
"""  # noqa: S608 - composed at import from constants

_READ_SQLITE = """
SELECT h.head AS horizon, {columns}
FROM (SELECT coalesce(max(seq), 0) AS head FROM change_log) h
LEFT JOIN (
  SELECT seq, '0' AS xid_text, event_id, kind, instance_id, message_id, occurred_at, payload
  FROM change_log
  WHERE seq > :seq{filters}
  ORDER BY seq
  LIMIT :limit
) c ON 1 = 1
"""


async def read(
    conn: AsyncConnection,
    after: ChangeCursor | None,
    *,
    limit: int,
    instance_ids: Sequence[str] | None = None,
    kinds: Sequence[ChangeKind] | None = None,
) -> ChangePage:
    if limit < 1 or limit > MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    after = after or START
    postgres = conn.dialect.name == "postgresql"
    filters, params = _filters(instance_ids, kinds)
    statement = (_READ_PG if postgres else _READ_SQLITE).format(columns=_COLUMNS, filters=filters)
    params.update(xid=str(after.xid), seq=after.seq, limit=limit)
    rows = (await conn.execute(text(statement), params)).all()
    occurred = UTCDateTime()
    dialect = conn.dialect
    changes = [
        ChangeRecord(
            seq=int(r.seq),
            xid=int(r.xid_text),
            event_id=r.event_id,
            kind=ChangeKind(r.kind),
            instance_id=r.instance_id,
            message_id=r.message_id,
            occurred_at=_aware(occurred.process_result_value(r.occurred_at, dialect)),
            payload=_payload(r.kind, r.payload),
            provider=r.provider or "",
        )
        for r in rows
        if r.seq is not None
    ]
    horizon = int(rows[0].horizon)
    if len(changes) == limit:
        # More may follow right behind the last one: resume exactly there.
        return ChangePage(changes, changes[-1].cursor)
    # Everything visible below the horizon was read (or filtered out): bookmark the horizon.
    bookmark = ChangeCursor(horizon, 0) if postgres else ChangeCursor(0, horizon)
    return ChangePage(changes, max(bookmark, changes[-1].cursor if changes else after, after))


def _aware(at: datetime | None) -> datetime:
    assert at is not None  # NOT NULL column
    return at


async def head(conn: AsyncConnection) -> ChangeCursor:
    """ "Now": a reader starting here sees every change that commits from now on (on PostgreSQL
    also the few that committed while an older transaction was still running — never fewer)."""
    if conn.dialect.name == "postgresql":
        statement = f"SELECT ({_HORIZON_PG})::text FROM (SELECT pg_current_snapshot() AS snap) s"  # noqa: S608
        return ChangeCursor(int((await conn.execute(text(statement))).scalar_one()), 0)
    # sqlite_sequence: the highest seq ever handed out, even when retention pruned the newest rows
    # (a cursor issued before is never "ahead" of the head).
    statement = (
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'change_log'), 0),"
        " coalesce((SELECT max(seq) FROM change_log), 0))"
    )
    return ChangeCursor(0, int((await conn.execute(text(statement))).scalar_one()))


_OLDEST_PG = "SELECT xid::text AS x, seq FROM change_log ORDER BY xid, seq LIMIT 1"
_OLDEST_SQLITE = "SELECT '0' AS x, seq FROM change_log ORDER BY seq LIMIT 1"


async def oldest(conn: AsyncConnection) -> ChangeCursor:
    """Just before the oldest change still kept (retention prunes from the old end)."""
    statement = _OLDEST_PG if conn.dialect.name == "postgresql" else _OLDEST_SQLITE
    row = (await conn.execute(text(statement))).first()
    if row is None:
        return START
    return ChangeCursor(int(row.x), int(row.seq) - 1)


async def identity(conn: AsyncConnection) -> tuple[str, str]:
    """(log id, cursor key) of this database's log, written once (migration 0009; here too for a
    database whose row went missing: the first writer wins, every replica reads the same)."""
    statement = select(change_log_identity.c.log_id, change_log_identity.c.cursor_key).where(
        change_log_identity.c.id == 1
    )
    row = (await conn.execute(statement)).first()
    if row is None:
        insert = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        values = {"id": 1, "log_id": secrets.token_hex(8), "cursor_key": secrets.token_hex(32)}
        await conn.execute(insert(change_log_identity).values(**values).on_conflict_do_nothing())
        row = (await conn.execute(statement)).one()
    return str(row.log_id), str(row.cursor_key)
