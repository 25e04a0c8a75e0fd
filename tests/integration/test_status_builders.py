"""Both statement builders of the status write path store the same outcome for the same batch.

The plan (statemachine/status_plan.py) decides; a builder only reads and writes it. The same batch
— two statuses of one message, a stale one, a failure, a status for a message not stored yet, a
re-delivery inside the batch — goes through the SQLAlchemy builder (one transaction per round),
through the locked one-event path one by one, and on PostgreSQL through the asyncpg lane; the
stored messages, events, change log and results must be the same, and the ones expected.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.schema import change_log, events, messages
from adapters.persistence.status_lane import PgStatusStatements, SqlStatusStatements
from adapters.persistence.store import Repository
from adapters.wapi.webhooks import parse_webhook
from statemachine.domain import MessageState, Plan, StateChange
from statemachine.events import EventReason
from tests.records import message_record

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
MOMENT = 1_764_504_000  # 2026-11-30 12:00 UTC


def _item(pid: str, word: str) -> tuple[Any, bytes, dict[str, str], datetime]:
    body = json.dumps(
        {"event": "webhookStatus", "instanceId": "I-1", "messageId": pid, "status": word, "moment": MOMENT}
    ).encode()
    return parse_webhook(body), body, {}, AT


BATCH = [
    _item("P-1", "delivered"),
    _item("P-2", "delivered"),  # already READ: stale
    _item("P-1", "read"),  # the same message again: a later round
    _item("P-3", "failed"),
    _item("P-9", "delivered"),  # not stored (yet): parked
    _item("P-1", "delivered"),  # a re-delivery of the first
]


def _sent(n: int, state: MessageState = MessageState.SENT) -> Any:
    history = [StateChange(MessageState.PENDING, MessageState.SENT, "PROVIDER_ACCEPTED", "send", AT)]
    if state is MessageState.READ:
        history.append(StateChange(MessageState.SENT, MessageState.READ, "WEBHOOK_STATUS", "webhook", AT))
    return message_record(
        id=f"m-{n}",
        state=state,
        provider_message_id=f"P-{n}",
        idempotency_key=f"k-{n}",
        at=AT,
        sent_at=AT,
        history=history,
        version=len(history) + 1,
    )


async def _reset(repo: Repository) -> int:
    """The three messages as stored before the batch; returns the change-log position after them."""
    async with repo.transaction() as conn:
        for table in (change_log, events, messages):
            await conn.execute(delete(table))
    for msg in (_sent(1), _sent(2, MessageState.READ), _sent(3)):
        await repo.insert_message(msg)
    async with repo.engine.connect() as conn:
        return int((await conn.execute(select(func.coalesce(func.max(change_log.c.seq), 0)))).scalar_one())


async def _stored(repo: Repository, results: list[Any], after: int) -> dict[str, Any]:
    async with repo.engine.connect() as conn:
        msgs = [
            (r.id, r.state, r.version, r.failure_reason, r.failure_detail, r.history)
            for r in await conn.execute(select(messages).order_by(messages.c.id))
        ]
        evs = [
            (r.dedupe_key, r.reason, r.parked, r.status, r.duplicates)
            for r in await conn.execute(select(events).order_by(events.c.dedupe_key))
        ]
        log = sorted(
            (r.kind, r.message_id or "", r.payload)
            for r in await conn.execute(select(change_log).where(change_log.c.seq > after))
        )
    outcome = [
        (str(r.reason), r.duplicate, [(c.change.to_state, c.change.applied) for c in r.message_changes])
        for r in results
    ]
    return {"messages": msgs, "events": evs, "log": log, "results": outcome}


async def test_every_builder_stores_the_same_outcome_for_the_same_batch(database_url: str) -> None:
    engine = create_engine(database_url)
    await upgrade_to_head(engine)
    repo = Repository(engine)
    try:
        await repo.upsert_instance("I-1", "I-1", "tok-1", Plan.LITE)
        outcomes: dict[str, dict[str, Any]] = {}

        after = await _reset(repo)
        results = await repo._ingest_statuses(
            list(BATCH), SqlStatusStatements(repo._insert_event_returning, engine=engine)
        )
        outcomes["sqlalchemy batch"] = await _stored(repo, results, after)

        after = await _reset(repo)
        results = [await repo._ingest_status_locked(item) for item in BATCH]
        outcomes["locked, one by one"] = await _stored(repo, results, after)

        if engine.dialect.name == "postgresql":
            after = await _reset(repo)
            results = await repo._ingest_statuses(list(BATCH), PgStatusStatements(repo._status_lease))
            outcomes["asyncpg lane"] = await _stored(repo, results, after)

        first = next(iter(outcomes.values()))
        for name, outcome in outcomes.items():
            assert outcome == first, name

        by_id = {m[0]: m for m in first["messages"]}
        assert by_id["m-1"][1:3] == ("READ", 4)  # delivered, then read: two writes
        assert by_id["m-2"][1:3] == ("READ", 3)  # the stale delivered is recorded, not applied, no bump
        assert [(h["to"], h["applied"]) for h in json.loads(by_id["m-2"][5])][-1] == ("DELIVERED", False)
        assert by_id["m-3"][1:4] == ("FAILED", 3, "PROVIDER_ERROR")
        assert [(e[1], e[2], e[4]) for e in first["events"] if "P-9" in e[0]] == [
            (EventReason.UNKNOWN_MESSAGE.value, True, 0)
        ]
        assert sorted(e[4] for e in first["events"]) == [0, 0, 0, 0, 1]  # the re-delivery counted once
        assert [r[:2] for r in first["results"]] == [
            ("APPLIED", False),
            ("STALE_STATUS", False),
            ("APPLIED", False),
            ("APPLIED", False),
            ("UNKNOWN_MESSAGE", False),
            ("APPLIED", True),
        ]
        assert [(kind, mid) for kind, mid, _ in first["log"]] == sorted(
            [("message.state_changed", "m-1"), ("message.state_changed", "m-1"), ("message.failed", "m-3")]
        )
    finally:
        await repo.aclose()
        await engine.dispose()
