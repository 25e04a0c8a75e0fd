"""Migration 0004 on a populated database: a database at the previous revision, with messages in
every state and parked events, is taken to head; nothing stored is lost, the open-work table
holds exactly the open messages, and the triggers keep it from then on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, insert, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import alembic_config, upgrade_to_head
from adapters.persistence.schema import events, instances, messages, metadata, open_messages
from adapters.persistence.store import Repository
from adapters.wapi.webhooks import parse_webhook
from statemachine.domain import MessageState

NOW = datetime.now(UTC)
BEFORE = "0003"


async def _alembic(engine: AsyncEngine, action: str, revision: str) -> None:
    def run(connection: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


def _message(n: int, state: MessageState, **extra: Any) -> dict[str, Any]:
    at = NOW - timedelta(minutes=30 + n)
    return {
        "id": f"00000000-0000-0000-0000-{n:012d}",
        "instance_id": "MIG-1",
        "idempotency_key": f"k-{n}",
        "request_hash": "h",
        "recipient": "5515981121710",
        "kind": "TEXT",
        "content": json.dumps({"body": f"olá {n}"}),
        "state": state.value,
        "attempts": 1,
        "history": "[]",
        "created_at": at,
        "updated_at": at,
        "sent_at": None if state is MessageState.PENDING else at,
        "provider_message_id": None if state is MessageState.PENDING else f"P-{n}",
        "version": 1,
        "stuck_at": None,  # every row names every column: executemany takes the first row's keys
        "failure_reason": "",
        **extra,
    }


@pytest.mark.filterwarnings("ignore:Did not recognize type .xid8.")
async def test_populated_database_migrates_to_head(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_to_head(engine)
        await _alembic(engine, "downgrade", BEFORE)
        async with engine.begin() as conn:
            await conn.execute(
                insert(instances).values(
                    id="MIG-1", name="Mig", plan="PRO", token="tok-secret-123456", state="CONNECTED",
                    reason="PHONE_CONFIRMED", phone_number="5511999990000", created_at=NOW, updated_at=NOW,
                )
            )  # fmt: skip
            rows = [
                *(_message(i, MessageState.DELIVERED) for i in range(0, 10)),
                *(_message(i, MessageState.READ) for i in range(10, 15)),
                *(_message(i, MessageState.FAILED, failure_reason="PROVIDER_ERROR") for i in range(15, 18)),
                *(_message(i, MessageState.SENT) for i in range(18, 22)),
                *(_message(i, MessageState.SENT, stuck_at=NOW - timedelta(minutes=5)) for i in range(22, 25)),
                *(_message(i, MessageState.PENDING) for i in range(25, 27)),
            ]
            # The columns of messages at the previous revision are the same: inserted as-is.
            await conn.execute(insert(messages), rows)
            await conn.execute(
                insert(events),
                [
                    {"id": f"e-{i}", "dedupe_key": f"d-{i}", "received_at": NOW - timedelta(minutes=i),
                     "route": "MESSAGE_STATUS", "reason": "UNKNOWN_MESSAGE", "instance_id": "MIG-1",
                     "provider_message_id": f"PHONE-{i}", "status": "DELIVERED", "parked": i % 2 == 0,
                     "payload": b"{}"}
                    for i in range(6)
                ],
            )  # fmt: skip

        await upgrade_to_head(engine)

        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(messages))).scalar_one() == len(rows)
            assert (await conn.execute(select(func.count()).select_from(events))).scalar_one() == 6
            open_rows = {r.message_id: r for r in await conn.execute(select(open_messages))}
            names = await conn.run_sync(lambda c: {ix["name"] for ix in inspect(c).get_indexes("messages")})
            drift = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        expected_open = {r["id"]: r for r in rows if r["state"] in ("PENDING", "SENT")}
        assert set(open_rows) == set(expected_open)
        for message_id, row in open_rows.items():
            assert row.state == expected_open[message_id]["state"]
            assert row.instance_id == "MIG-1"
            assert (row.stuck_at is not None) == (expected_open[message_id].get("stuck_at") is not None)
        assert "ix_messages_state_sent_at" not in names
        assert "ix_messages_instance_id_sent_at" in names
        assert drift == [], drift  # the migrated schema is exactly the declared one

        repo = Repository(engine)
        try:
            assert await repo.stuck_counts() == {"MIG-1": 3}
            stuck, _ = await repo.list_messages(stuck_only=True)
            assert {m.id for m in stuck} == {r["id"] for r in rows[22:25]}
            # Sent 30+ minutes ago without a receipt: the four not yet flagged become stuck now.
            newly = await repo.mark_stuck(NOW - timedelta(minutes=10))
            assert {m.id for m in newly} == {r["id"] for r in rows[18:22]}
            assert await repo.stuck_counts() == {"MIG-1": 7}
            # The triggers run on the migrated table: a delivery closes the message's open row.
            body = json.dumps(
                {"event": "webhookStatus", "instanceId": "MIG-1", "messageId": "P-18", "status": "delivered",
                 "moment": 1_750_000_000}
            ).encode()  # fmt: skip
            result = await repo.ingest(parse_webhook(body), body, {}, NOW)
            assert result.message_changes
            assert await repo.stuck_counts() == {"MIG-1": 6}
            async with engine.connect() as conn:
                ids = {r.message_id for r in await conn.execute(select(open_messages.c.message_id))}
            assert rows[18]["id"] not in ids
            assert len(ids) == len(expected_open) - 1
        finally:
            await repo.aclose()
    finally:
        await engine.dispose()
