"""Every hot or periodic query reads rows in proportion to what it returns or to the open work,
never to the history: each one the repository runs is captured, then EXPLAIN ANALYZE'd over a
seeded Postgres table whose history is far larger than its open work — once as a custom plan
and once as the generic plan a prepared statement switches to after a few executions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event

from adapters.persistence import instances, pg_fast
from adapters.persistence.db import create_engine
from adapters.persistence.store import Repository
from bench.dataset import Size, asyncpg_dsn, seed
from services.app.jobs import stall_stuck_runs
from statemachine.ports import RetentionPolicy
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="query plans are checked on Postgres")

HISTORY_TABLES = {"messages", "events", "chat_statuses", "instance_transitions"}
# Five instances, 40,000 messages and events of history, 2,800 open messages (2,000 stuck),
# 5,000 long-parked statuses (phone-typed messages).
SIZE = Size(instances=5, messages=40_000, events=40_000, parked=5_000)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _history_rows_read(plan: dict[str, Any]) -> tuple[int, list[str]]:
    """Rows the plan touched in history tables, and any sequential scan of one."""
    rows, scans = 0, []
    for node in _nodes(plan):
        if node.get("Relation Name") not in HISTORY_TABLES:
            continue
        if node["Node Type"] == "Seq Scan":
            scans.append(node["Relation Name"])
        loops = node.get("Actual Loops", 1)
        seen = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        rows += int(seen * loops) + int(node.get("Rows Removed by Index Recheck", 0))
    return rows, scans


def _literal(value: Any) -> str:
    """A bound value as SQL text for EXECUTE (EXPLAIN EXECUTE takes no protocol parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "ARRAY[" + ", ".join(_literal(v) for v in value) + "]"
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


async def _plan(conn: asyncpg.Connection, sql: str, params: tuple[Any, ...], mode: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the statement prepared under `mode`; rolled back (sweeps update rows)."""
    args = ", ".join(_literal(p) for p in params)
    execute = f"EXECUTE hot({args})" if params else "EXECUTE hot"
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE hot AS {sql}")
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {execute}")
    finally:
        await transaction.rollback()
        await conn.execute("DEALLOCATE hot")
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    return plan


async def test_hot_queries_read_open_work_not_history(database_url: str) -> None:
    engine = create_engine(database_url)
    repo = Repository(engine)
    captured: list[tuple[str, str, tuple[Any, ...]]] = []
    label = ["setup"]

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        # Lookups, updates and deletes; appends (INSERT, batches) have no scan to look at and
        # cannot be repeated (unique ids).
        verb = statement.lstrip().split(" ", 1)[0].upper()
        wanted = verb in ("SELECT", "UPDATE", "DELETE", "WITH") and "INSERT INTO" not in statement.upper()
        if wanted and not _many and label[0] != "setup" and "advisory" not in statement:
            captured.append((label[0], statement, tuple(parameters or ())))

    try:
        await seed(asyncpg_dsn(database_url), SIZE)
        now = datetime.now(UTC)
        instance = "BENCH-0001"
        stuck_page, _ = await repo.list_messages(stuck_only=True, page_size=50)
        assert len(stuck_page) == 50
        pid = stuck_page[0].provider_message_id
        calls = {
            "stuck_counts(all)": repo.stuck_counts(),
            "stuck_counts(one)": repo.stuck_counts([instance]),
            "list_instances": repo.list_instances(),
            "mark_stuck": repo.mark_stuck(now - timedelta(seconds=300)),
            "reconcile_pending": repo.reconcile_pending(now - timedelta(seconds=60)),
            "stall_stuck_runs": stall_stuck_runs(repo, [f"BENCH-{i:04d}" for i in range(SIZE.instances)], 3),
            "instance_state_counts": repo.instance_state_counts(),
            "stall_stuck_runs(one)": stall_stuck_runs(repo, [instance], 3),
            "apply_parked(sweep)": repo.apply_parked(),
            "apply_parked(one)": repo.apply_parked(pid),
            "list_messages(stuck)": repo.list_messages(stuck_only=True),
            "list_messages(stuck, instance)": repo.list_messages(stuck_only=True, instance_id=instance),
            "list_messages(instance)": repo.list_messages(instance_id=instance),
            "list_messages": repo.list_messages(),
            "get_message": repo.get_message(stuck_page[0].id),
            "get_instance": repo.get_instance(instance),
            "instance_history": repo.instance_history(instance),
            "last_instance_change_id": repo.last_instance_change_id(),
            # The stall watch's reads, each tick (the last seconds) and at bootstrap (the newest).
            "recent_sends": repo.recent_sends(instance, now - timedelta(seconds=10)),
            "recent_receipts": repo.recent_receipts(instance, now - timedelta(seconds=10)),
            "recent_acks": repo.recent_acks(instance, now - timedelta(seconds=10)),
            "recent_acks(bootstrap)": repo.recent_acks(instance, now - timedelta(hours=1), limit=4096, newest=True),
            # Last: it deletes the oldest slice of history, in batches of 200.
            "retention": repo.prune(
                RetentionPolicy(
                    events=timedelta(days=29.5),
                    chat_statuses=timedelta(days=29.5),
                    instance_transitions=timedelta(days=29.5),
                    messages=timedelta(days=29.5),
                    change_log=timedelta(days=29.5),
                    batch=200,
                    pause=0,
                )
            ),
        }
        for name, call in calls.items():
            label[0] = name
            await call
        event.remove(engine.sync_engine, "before_cursor_execute", _capture)
        names = {name for name, *_ in captured}
        # list_instances reads through the driver (not seen by the listener): its statement is
        # planned below like the fast lanes'.
        assert set(calls) - {"apply_parked(one)", "list_instances"} <= names, set(calls) - names
        pids = [m.provider_message_id for m in stuck_page[:20]]
        captured += [
            ("list_instances", instances._LIST_INSTANCES_PG, (None,)),
            ("list_instances(states)", instances._LIST_INSTANCES_PG, (["CONNECTED"],)),
            ("fast lane: status read", pg_fast.READ_FOR_STATUS, (pids,)),
            ("fast lane: parked after SENT", pg_fast.PARKED_FOR, (pids,)),
        ]
        async with engine.connect() as probe:
            open_work = (await probe.exec_driver_sql("SELECT count(*) FROM open_messages")).scalar_one()
            history = (await probe.exec_driver_sql("SELECT count(*) FROM messages")).scalar_one()
        assert history >= 10 * open_work
        limit = open_work + 200
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        failures = []
        try:
            for name, sql, params in captured:
                for mode in ("force_custom_plan", "force_generic_plan"):
                    plan = await _plan(conn, sql, params, mode)
                    rows, scans = _history_rows_read(plan)
                    if scans or rows > limit:
                        failures.append(f"{name} [{mode}]: {rows} history rows read, seq scans {scans}\n{sql}")
        finally:
            await conn.close()
        assert not failures, "\n\n".join(failures)
    finally:
        await repo.aclose()
        await engine.dispose()
