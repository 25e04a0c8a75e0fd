"""The history column gains entries by one rule, spelled for SQLAlchemy and for the raw lanes:
both give the JSON list of every entry, from an empty list and from a longer one."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, select, text, update

from adapters.persistence import history
from statemachine.domain import MessageState, StateChange

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ENTRIES = [
    StateChange(MessageState.PENDING, MessageState.SENT, "PROVIDER_ACCEPTED", "send", AT),
    StateChange(MessageState.SENT, MessageState.READ, "WEBHOOK_STATUS", "webhook", AT, applied=False),
]


def test_both_spellings_append_the_same_entries() -> None:
    t = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("h", Text))
    engine = create_engine("sqlite://")
    new = history.entries_json(ENTRIES)
    with engine.begin() as conn:
        t.create(conn)
        for n, start in enumerate(([], ENTRIES[:1])):
            stored = history.history_json(start)
            conn.execute(t.insert(), [{"id": 2 * n, "h": stored}, {"id": 2 * n + 1, "h": stored}])
            conn.execute(update(t).where(t.c.id == 2 * n).values(h=history.append(t.c.h, "entries")), {"entries": new})
            conn.execute(
                text(f"UPDATE t SET h = {history.append_sql('h', ':entries')} WHERE id = :id"),  # noqa: S608
                {"entries": new, "id": 2 * n + 1},
            )
            orm, raw = (r.h for r in conn.execute(select(t.c.h).where(t.c.id.in_([2 * n, 2 * n + 1])).order_by(t.c.id)))
            assert orm == raw == history.history_json([*start, *ENTRIES])
            assert history.parse(raw) == [*start, *ENTRIES]
            assert json.loads(raw)[-1]["applied"] is False
