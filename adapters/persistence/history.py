"""A message's history column: one representation, and one way to add to it.

The column holds a JSON list of state changes (`entry_json` for each). Rows are created with the
list (`history_json`); every later change appends its entries in SQL, in the statement that makes
the change, with the rule below — spelled once for SQLAlchemy (`append`) and once for the raw
asyncpg lanes (`append_sql`); `tests/unit/test_history_append.py` checks the two say the same.
Appending in SQL means a writer never re-sends (or even reads) the history it extends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Text, bindparam, case, func, literal
from sqlalchemy.sql.elements import ColumnElement

from statemachine.domain import StateChange


def entry_json(c: StateChange) -> str:
    """orjson: the same compact text as the stdlib's (the values are ASCII state, reason and
    source names and an ISO timestamp) at a fraction of the cost; a free-form value it would
    write differently (non-ASCII, DEL) takes the stdlib."""
    entry = {
        "from": c.from_state,
        "to": c.to_state,
        "reason": c.reason,
        "source": c.source,
        "at": c.at.isoformat(),
        "applied": c.applied,
    }
    text = orjson.dumps(entry)
    if text.isascii() and b"\x7f" not in text:
        return text.decode()
    return json.dumps(entry, separators=(",", ":"))


def entries_json(changes: Sequence[StateChange]) -> str:
    """The entries to append, comma-separated (what `append` / `append_sql` add inside the list)."""
    return ",".join(entry_json(c) for c in changes)


def history_json(history: Sequence[StateChange]) -> str:
    """A new row's list: the same text as json.dumps of the entries."""
    return "[" + entries_json(history) + "]"


def parse(text: str) -> list[StateChange]:
    return [
        StateChange(h["from"], h["to"], h["reason"], h["source"], datetime.fromisoformat(h["at"]), h["applied"])
        for h in json.loads(text)
    ]


def append(column: ColumnElement[Any], param: str) -> ColumnElement[Any]:
    """`column` with the entries bound as `param` appended (SQLAlchemy; SQLite and PostgreSQL)."""
    new = bindparam(param, type_=Text)
    return case(
        (column == "[]", literal("[", Text).concat(new).concat("]")),
        else_=func.substr(column, 1, func.length(column) - 1).concat(",").concat(new).concat("]"),
    )


def append_sql(column: str, new: str) -> str:
    """The same rule as SQL text, for the raw asyncpg statements."""
    return (
        f"CASE WHEN {column} = '[]' THEN '[' || {new} || ']' "
        f"ELSE substr({column}, 1, length({column}) - 1) || ',' || {new} || ']' END"
    )
