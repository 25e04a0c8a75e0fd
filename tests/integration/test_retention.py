"""Retention deletes expired history in small batches, never open work or anything recent, one
replica at a time, and reports what it did as metrics."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from adapters.persistence.db import create_engine
from adapters.persistence.migrate import upgrade_to_head
from adapters.persistence.retention import PRUNE_LOCK_KEY, Pruner
from adapters.persistence.schema import change_log, chat_statuses, events, instance_transitions, messages, open_messages
from services.config import Settings
from services.core_wiring import gateway_config
from statemachine.domain import MessageState
from statemachine.ports import RetentionPolicy
from tests.conftest import POSTGRES_URL
from tests.integration.harness import start_harness, stop_harness

NOW = datetime.now(UTC)
OLD = 25  # expired rows per table: more than two batches of 10


def _message(n: str, state: MessageState, created: datetime, updated: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"m-{n}",
        "instance_id": "I-1",
        "idempotency_key": f"k-{n}",
        "request_hash": "h",
        "recipient": "5515981121710",
        "kind": "TEXT",
        "content": "{}",
        "state": state.value,
        "attempts": 1,
        "history": "[]",
        "created_at": created,
        "updated_at": updated,
        "sent_at": created if state is not MessageState.PENDING else None,
        "version": 1,
        **extra,
    }


def _event(n: str, route: str, at: datetime) -> dict[str, Any]:
    return {"id": f"e-{n}", "dedupe_key": f"d-{n}", "received_at": at, "route": route, "reason": "APPLIED",
            "instance_id": "I-1", "payload": b"{}"}  # fmt: skip


async def _seed(conn: Any) -> None:
    long_ago, recent = NOW - timedelta(days=100), NOW - timedelta(hours=1)
    terminal = [MessageState.DELIVERED, MessageState.READ, MessageState.FAILED, MessageState.PLAYED]
    rows = [_message(f"old-{i}", terminal[i % 4], long_ago + timedelta(seconds=i), long_ago) for i in range(OLD)]
    rows += [
        _message("open-pending", MessageState.PENDING, long_ago, long_ago),
        _message("open-sent", MessageState.SENT, long_ago, long_ago),
        _message("open-stuck", MessageState.SENT, long_ago, long_ago, stuck_at=long_ago),
        # Created long ago, changed recently (a late READ): kept for its retention period.
        _message("changed-lately", MessageState.READ, long_ago, recent),
        *(_message(f"new-{i}", MessageState.DELIVERED, recent, recent) for i in range(3)),
    ]
    await conn.execute(insert(messages), rows)
    routes = ["MESSAGE_STATUS", "CHAT_STATUS", "CONNECTION", "RECEIVED"]
    await conn.execute(
        insert(events),
        [_event(f"old-{i}", routes[i % 4], NOW - timedelta(days=40)) for i in range(OLD)]
        + [_event(f"new-{i}", routes[i % 4], recent) for i in range(3)],
    )
    await conn.execute(
        insert(chat_statuses),
        [{"event_id": f"c-{i}", "instance_id": "I-1", "received_at": NOW - timedelta(days=40)} for i in range(OLD)]
        + [{"event_id": f"c-new-{i}", "instance_id": "I-1", "received_at": recent} for i in range(3)],
    )
    transition = {"instance_id": "I-1", "from_state": "UNKNOWN", "to_state": "CONNECTED", "reason": "X", "source": "t"}
    await conn.execute(
        insert(instance_transitions),
        [{**transition, "at": long_ago} for _ in range(OLD)] + [{**transition, "at": recent} for _ in range(3)],
    )
    change = {"kind": "instance.health_changed", "instance_id": "I-1", "payload": json.dumps({})}
    await conn.execute(
        insert(change_log),
        [{**change, "event_id": f"evt_old{i}", "occurred_at": NOW - timedelta(days=10)} for i in range(OLD)]
        + [{**change, "event_id": f"evt_new{i}", "occurred_at": recent} for i in range(3)],
    )


async def _count(conn: Any, table: Any) -> int:
    return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_prune_deletes_expired_history_only(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await _seed(conn)
        pruner, policy = Pruner(engine), RetentionPolicy(batch=10, pause=0)
        report = await pruner.run_once(policy)
        assert report.ran
        assert report.complete
        assert report.deleted == {
            "events": OLD,
            "chat_statuses": OLD,
            "instance_transitions": OLD,
            "change_log": OLD,
            "messages": OLD,
        }
        async with engine.connect() as conn:
            kept = {r.id for r in await conn.execute(select(messages.c.id))}
            assert kept == {"m-open-pending", "m-open-sent", "m-open-stuck", "m-changed-lately"} | {
                f"m-new-{i}" for i in range(3)
            }
            assert {r.message_id for r in await conn.execute(select(open_messages.c.message_id))} == {
                "m-open-pending",
                "m-open-sent",
                "m-open-stuck",
            }
            assert {r.id for r in await conn.execute(select(events.c.id))} == {f"e-new-{i}" for i in range(3)}
            for table in (chat_statuses, instance_transitions, change_log):
                assert await _count(conn, table) == 3, table.name
        again = await pruner.run_once(policy)
        assert again.ran
        assert sum(again.deleted.values()) == 0
    finally:
        await engine.dispose()


@pytest.mark.skipif(not POSTGRES_URL, reason="the replica lease is a Postgres advisory lock")
async def test_one_replica_prunes_at_a_time(database_url: str) -> None:
    engine, other = create_engine(database_url), create_engine(database_url)
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            await _seed(conn)
        async with other.connect() as holder:
            # Another replica's run holds the lease: this one skips its turn and deletes nothing.
            await holder.execute(text(f"SELECT pg_advisory_lock({PRUNE_LOCK_KEY})"))
            skipped = await Pruner(engine).run_once(RetentionPolicy(batch=10, pause=0))
            assert not skipped.ran
            async with engine.connect() as conn:
                assert await _count(conn, messages) == OLD + 7
            await holder.execute(text(f"SELECT pg_advisory_unlock({PRUNE_LOCK_KEY})"))
        report = await Pruner(engine).run_once(RetentionPolicy(batch=10, pause=0))
        assert report.ran
        assert report.deleted["messages"] == OLD
    finally:
        await engine.dispose()
        await other.dispose()


async def test_retention_runs_are_measured(database_url: str) -> None:
    harness = await start_harness(database_url, retention_interval=0, retention_batch=10)
    try:
        async with harness.repo.engine.begin() as conn:
            await _seed(conn)
        report = await harness.app.jobs.prune_once()
        assert report.ran
        metrics = harness.app.telemetry.prometheus_text().decode()
        pruned = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r'^wapiguard_retention_pruned_total\{.*table="(\w+)"\} (\S+)$', metrics, re.M)
        }
        assert pruned == {t: float(OLD) for t in report.deleted}
        assert re.search(r"^wapiguard_retention_duration_seconds_count\{.*\} 1\.0$", metrics, re.M)
    finally:
        await stop_harness(harness)


def test_retention_settings_reach_the_pruner() -> None:
    config = gateway_config(
        Settings(
            retention_events_days=3,
            retention_chat_statuses_days=4,
            retention_transitions_days=5,
            retention_messages_days=6,
            retention_change_log_days=2,
            retention_batch=50,
            retention_interval=120,
        )
    )
    policy = config.retention
    assert (policy.events, policy.chat_statuses, policy.instance_transitions) == (
        timedelta(days=3),
        timedelta(days=4),
        timedelta(days=5),
    )
    assert (policy.messages, policy.change_log, policy.batch) == (timedelta(days=6), timedelta(days=2), 50)
    assert config.retention_interval == 120


def test_event_retention_cannot_undercut_redelivery_dedupe() -> None:
    with pytest.raises(ValueError, match="retention_events_days"):
        Settings(retention_events_days=1)
    defaults = Settings()
    assert defaults.retention_events_days == 30
    assert defaults.retention_messages_days == 90


async def test_a_senders_clock_neither_prunes_nor_pins_a_logged_change(database_url: str) -> None:
    """W-API's `moment` is the sender's clock (seen as 1970 and as far in the future): the change
    log is pruned by when wapi-guard logged a change, so a customer message with an old moment is
    still streamed after a retention run, and one from "2099" is pruned on time like any other."""
    from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc

    h = await start_harness(database_url)
    try:
        await h.register("INST-A")
        for n, moment in enumerate((1, 4_102_444_800)):  # 1970-01-01 and 2100-01-01
            await h.webhook(
                {
                    "event": "webhookReceived",
                    "instanceId": "INST-A",
                    "messageId": f"3EB0CLOCK{n}",
                    "chat": {"id": "5511988887777"},
                    "moment": moment,
                    "msgContent": {"conversation": f"clock {n}"},
                }
            )
        report = await Pruner(h.repo.engine).run_once(RetentionPolicy(pause=0))
        assert report.ran
        assert report.deleted["change_log"] == 0
        listed = await events_pb2_grpc.EventServiceStub(h.channel).ListEvents(
            events_pb2.ListEventsRequest(from_oldest=True)
        )
        received = [e for e in listed.events if e.HasField("message_received")]
        assert [e.message_received.provider_message_id for e in received] == ["3EB0CLOCK0", "3EB0CLOCK1"]
        assert received[0].message_received.moment.seconds == 1  # the sender's clock is kept as sent
        # A week and a day later, both are due, whatever moment the sender claimed.
        later = datetime.now(UTC) + timedelta(days=8)
        report = await Pruner(h.repo.engine).run_once(RetentionPolicy(pause=0), now=later)
        assert report.deleted["change_log"] >= 2
    finally:
        await stop_harness(h)
