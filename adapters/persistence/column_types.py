"""The schema's column types and shared metadata (schema.py holds the tables)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Dialect, Integer, MetaData, text
from sqlalchemy.types import DateTime, TypeDecorator, UserDefinedType

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every dialect (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# SQLite autoincrement needs INTEGER PRIMARY KEY; Postgres gets BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def partial_index(predicate: str, sqlite_predicate: str | None = None) -> dict[str, Any]:
    """A partial-index predicate on both dialects. Queries spell it with literals, never
    parameters: a generic (prepared) plan can only use a partial index it can prove applies."""
    return {"postgresql_where": text(predicate), "sqlite_where": text(sqlite_predicate or predicate)}


class _Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (`xid8`): the writing transaction of a change-log row."""

    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return "xid8"


# PostgreSQL: xid8 DEFAULT pg_current_xact_id(); SQLite: DEFAULT 0 (one writer, seq alone
# orders). Both defaults are dialect-specific, so migration 0003 sets them; rows are always
# inserted without this column.
Xid = Integer().with_variant(_Xid8(), "postgresql")
