"""The change log: every state change appends its entry in the same transaction, on every path,
and a reader that follows the cursor sees each entry once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.api.wapiguard.v1 import send_pb2
from statemachine.changes import ChangeCursor, ChangeKind, ChangeRecord, InvalidCursor
from statemachine.domain import SendOutcome
from statemachine.instance_machine import InstanceTrigger
from tests.conftest import POSTGRES_URL
from tests.integration.harness import Harness, ScriptedProvider, start_harness, stop_harness
from tests.integration.test_webhooks import status


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url, stuck_after=0.05, stall_threshold=2, sweep_interval=0)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def read_all(
    guard: Harness, after: ChangeCursor | None = None, *, expect: int, **filters: Any
) -> list[ChangeRecord]:
    """Follows the cursor page by page (small pages, so paging itself is exercised) until `expect`
    changes came and nothing more is visible. On PostgreSQL the horizon is cluster-wide: another
    database's open transaction may hold the newest changes back for a moment, so it waits
    (bounded) rather than reading once."""
    out: list[ChangeRecord] = []
    cursor = after
    for _ in range(600):  # at most ~30 s of waiting
        page = await guard.repo.read_changes(cursor, limit=3, **filters)
        out.extend(page.changes)
        assert page.cursor >= (cursor or ChangeCursor(0, 0))
        cursor = page.cursor
        if not page.changes:
            if len(out) >= expect:
                return out
            await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expect} changes, saw {len(out)}")


def kinds(changes: list[ChangeRecord]) -> list[tuple[str, str | None]]:
    return [(c.kind.value, c.payload.get("to_state")) for c in changes]


async def send(guard: Harness, instance_id: str, key: str) -> Any:
    return await guard.send.SendMessage(
        send_pb2.SendMessageRequest(
            instance_id=instance_id, to="5515981121710", idempotency_key=key, text=send_pb2.TextContent(body=key)
        )
    )


async def test_a_message_story_is_in_the_log_in_order(guard: Harness) -> None:
    await guard.register("cl-1")
    await guard.connect("cl-1")
    start = await guard.repo.head_change_cursor()
    sent = await send(guard, "cl-1", "k1")
    await guard.webhook(status("cl-1", sent.provider_message_id, "delivered"))
    await guard.webhook(status("cl-1", sent.provider_message_id, "delivered"))  # re-delivery: nothing new
    await guard.webhook(status("cl-1", sent.provider_message_id, "read", moment=1_749_132_500))

    changes = await read_all(guard, start, expect=4)
    assert kinds(changes) == [
        ("message.state_changed", "PENDING"),
        ("message.state_changed", "SENT"),
        ("message.state_changed", "DELIVERED"),
        ("message.state_changed", "READ"),
    ]
    assert {c.message_id for c in changes} == {sent.id}
    assert [c.payload["from_state"] for c in changes] == [None, "PENDING", "SENT", "DELIVERED"]
    assert [c.payload["version"] for c in changes] == [1, 2, 3, 4]
    stored = await guard.repo.get_message(sent.id)
    assert stored.version == 4
    last = changes[-1].payload
    assert (last["recipient"], last["provider_message_id"], last["attempt"], last["reason"]) == (
        "5515981121710",
        sent.provider_message_id,
        1,
        "WEBHOOK_STATUS",
    )
    assert len({c.event_id for c in changes}) == 4
    assert all(c.event_id.startswith("evt_") and c.instance_id == "cl-1" for c in changes)


async def test_a_stale_status_leaves_the_version_the_last_event_carried(guard: Harness) -> None:
    """Issue 21 item 9: a late DELIVERED after READ and a repeated "sent" are recorded in the
    history but bump no version, so GetMessage's version equals the last event's."""
    await guard.register("cl-v")
    await guard.connect("cl-v")
    start = await guard.repo.head_change_cursor()
    sent = await send(guard, "cl-v", "kv")
    pid = sent.provider_message_id
    await guard.webhook(status("cl-v", pid, "read", moment=1_749_132_500))
    await guard.webhook(status("cl-v", pid, "delivered", moment=1_749_132_501))  # late: stale
    await guard.webhook(status("cl-v", pid, "sent", moment=1_749_132_502))  # stale
    # Only this message's entries: on PostgreSQL the head may also let through a change that
    # committed while another (cluster-wide) transaction was open.
    changes = [c for c in await read_all(guard, start, expect=3) if c.message_id == sent.id]
    assert kinds(changes) == [
        ("message.state_changed", "PENDING"),
        ("message.state_changed", "SENT"),
        ("message.state_changed", "READ"),
    ]
    got = await guard.send.GetMessage(send_pb2.GetMessageRequest(message_id=sent.id))
    assert [(h.applied, h.reason) for h in got.history][-2:] == [(False, "STALE_STATUS"), (False, "STALE_STATUS")]
    assert got.version == changes[-1].payload["version"] == 3


async def test_a_blocked_send_logs_its_failure(guard: Harness) -> None:
    await guard.register("cl-2")
    await guard.connect("cl-2", phone=None)  # SESSION_INCOMPLETE
    start = await guard.repo.head_change_cursor()
    with pytest.raises(grpc.aio.AioRpcError):
        await send(guard, "cl-2", "blocked")
    changes = await read_all(guard, start, expect=1)
    assert kinds(changes) == [("message.failed", "FAILED")]  # one entry per change
    assert changes[0].payload["from_state"] is None
    assert changes[0].payload["failure_reason"] == "SESSION_INCOMPLETE"
    assert changes[0].payload["reason"] == "SESSION_INCOMPLETE"
    assert changes[0].payload["source"] == "preflight"


async def test_provider_failure_and_retry_are_logged(database_url: str) -> None:
    provider = ScriptedProvider()
    provider.send_result = lambda _m: SendOutcome(failure=_reason("PROVIDER_UNAVAILABLE"), detail="503")
    harness = await start_harness(database_url, provider, sweep_interval=0)
    try:
        await harness.register("cl-3")
        await harness.connect("cl-3")
        start = await harness.repo.head_change_cursor()
        with pytest.raises(grpc.aio.AioRpcError):
            await send(harness, "cl-3", "fails")
        failed = (await read_all(harness, start, expect=2))[-1]
        assert (failed.kind, failed.payload["failure_reason"]) == (ChangeKind.MESSAGE_FAILED, "PROVIDER_UNAVAILABLE")
        provider.send_result = lambda _m: SendOutcome(provider_message_id="3EB0RETRY0001")
        await harness.send.RetryMessage(send_pb2.RetryMessageRequest(message_id=failed.message_id or ""))
        changes = await read_all(harness, start, expect=4)
        assert kinds(changes) == [
            ("message.state_changed", "PENDING"),
            ("message.failed", "FAILED"),
            ("message.state_changed", "PENDING"),
            ("message.state_changed", "SENT"),
        ]
        assert [c.payload["attempt"] for c in changes[2:]] == [2, 2]
        assert changes[2].payload["reason"] == "RETRY_REQUESTED"
    finally:
        await stop_harness(harness)


def _reason(name: str) -> Any:
    from statemachine.domain import Reason

    return Reason(name)


async def test_instance_health_changes_and_stuck_alerts_are_logged(guard: Harness) -> None:
    await guard.register("cl-4")
    start = await guard.repo.head_change_cursor()
    await guard.connect("cl-4")
    await guard.connect("cl-4")  # the same health again: no entry
    sent = [await send(guard, "cl-4", f"s{i}") for i in range(2)]
    await asyncio.sleep(0.1)
    await guard.app.jobs.sweep_once()

    health = await read_all(guard, start, expect=2, kinds=[ChangeKind.INSTANCE_HEALTH_CHANGED])
    assert [(c.payload["from_state"], c.payload["to_state"], c.payload["reason"]) for c in health] == [
        ("UNKNOWN", "CONNECTED", "PHONE_CONFIRMED"),
        ("CONNECTED", "DEGRADED", "DELIVERY_STALLED"),
    ]
    assert health[0].payload["phone"] == "5511999990000"
    assert health[1].payload["source"] == "sweeper"
    stuck = await read_all(guard, start, expect=2, kinds=[ChangeKind.MESSAGE_STUCK])
    assert sorted(c.message_id or "" for c in stuck) == sorted(m.id for m in sent)
    await guard.app.jobs.sweep_once()
    assert len(await read_all(guard, start, expect=2, kinds=[ChangeKind.MESSAGE_STUCK])) == 2  # once each


async def test_received_and_from_phone_messages_are_logged_raw(guard: Harness) -> None:
    await guard.register("cl-5")
    start = await guard.repo.head_change_cursor()
    received = {
        "event": "webhookReceived",
        "instanceId": "cl-5",
        "messageId": "3EB0INBOUND01",
        "fromMe": False,
        "chat": {"id": "5599999999999"},
        "moment": 1_749_132_337,
        "msgContent": {"extendedTextMessage": {"text": "oi"}},
        "big": 2**70,  # beyond 64 bits: still kept exactly
    }
    await guard.webhook(received)
    await guard.webhook(received)  # a re-delivery is stored once, logged once
    from_api = {"event": "webhookDelivery", "instanceId": "cl-5", "messageId": "A1", "fromMe": True, "fromApi": True}
    from_phone = {"event": "webhookDelivery", "instanceId": "cl-5", "messageId": "P1", "fromMe": True}
    await guard.webhook(from_api)
    await guard.webhook(from_phone)

    changes = await read_all(guard, start, expect=2)
    assert [c.kind for c in changes] == [ChangeKind.MESSAGE_RECEIVED, ChangeKind.MESSAGE_FROM_PHONE]
    inbound, own = changes
    assert inbound.payload["body"] == received
    assert (inbound.payload["provider_message_id"], inbound.payload["chat_id"]) == ("3EB0INBOUND01", "5599999999999")
    assert inbound.payload["webhook_event_id"]
    assert own.payload["provider_message_id"] == "P1"


async def test_filters_skip_rows_and_the_cursor_still_advances(guard: Harness) -> None:
    for instance_id in ("cl-6", "cl-7"):
        await guard.register(instance_id)
        await guard.connect(instance_id)
    start = await guard.repo.head_change_cursor()
    await send(guard, "cl-6", "a")
    await send(guard, "cl-7", "b")
    only_7 = await read_all(guard, start, expect=2, instance_ids=["cl-7"])
    assert {c.instance_id for c in only_7} == {"cl-7"}
    assert len(only_7) == 2
    everything = await read_all(guard, start, expect=4)
    assert len(everything) == 4
    # A filter that matches nothing still moves the bookmark past what it skipped.
    page = await guard.repo.read_changes(start, limit=10, kinds=[ChangeKind.MESSAGE_RECEIVED])
    assert page.changes == []
    assert page.cursor >= everything[-1].cursor
    assert (await guard.repo.read_changes(page.cursor, limit=10)).changes == []
    assert await guard.repo.oldest_change_cursor() < everything[0].cursor


def test_cursor_round_trips_and_garbage_is_refused() -> None:
    cursor = ChangeCursor(123_456_789, 42)
    assert ChangeCursor.decode(cursor.encode()) == cursor
    for garbage in ("", "abc", "c1.", "c1.!!!", "c1." + "A" * 80, "c1.MTIz", "c1.LTEuMg"):
        with pytest.raises(InvalidCursor):
            ChangeCursor.decode(garbage)
    assert ChangeCursor(1, 9) < ChangeCursor(2, 0) < ChangeCursor(2, 1)


@pytest.mark.skipif(not POSTGRES_URL, reason="LISTEN/NOTIFY is PostgreSQL's")
async def test_postgres_notifies_on_commit_only(guard: Harness) -> None:
    import asyncpg

    woken: asyncio.Queue[str] = asyncio.Queue()
    url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")
    listener = await asyncpg.connect(url)
    try:
        await listener.add_listener("wapiguard_changes", lambda *args: woken.put_nowait(args[2]))
        await guard.register("cl-9")
        async with guard.repo.transaction() as conn:
            await guard.repo.apply_instance_trigger(
                "cl-9", InstanceTrigger.REPORT_DISCONNECTED, source="test", conn=conn
            )
            await asyncio.sleep(0.2)
            assert woken.empty()  # not before the commit
        assert await asyncio.wait_for(woken.get(), 5) == "wapiguard_changes"
    finally:
        await listener.close()


async def test_concurrent_statuses_lift_a_stall_once_and_log_each_change_once(guard: Harness) -> None:
    for instance_id in ("cl-s1", "cl-s2"):
        await guard.register(instance_id)
        await guard.connect(instance_id)
    stalled = [await send(guard, "cl-s1", f"s{i}") for i in range(2)]
    other = await send(guard, "cl-s2", "o")
    await asyncio.sleep(0.1)
    await guard.app.jobs.sweep_once()
    start = await guard.repo.head_change_cursor()
    # Sent together so they share group-commit batches: the stalled instance's statuses take the
    # one-event path, which alone lifts the stall.
    await asyncio.gather(
        guard.webhook(status("cl-s1", stalled[0].provider_message_id, "delivered")),
        guard.webhook(status("cl-s2", other.provider_message_id, "delivered")),
        guard.webhook(status("cl-s1", stalled[1].provider_message_id, "read")),
        guard.webhook(status("cl-s1", stalled[1].provider_message_id, "read")),  # a re-delivery
    )
    changes = await read_all(guard, start, expect=4)
    lifted = [c.payload for c in changes if c.kind is ChangeKind.INSTANCE_HEALTH_CHANGED]
    assert [(p["instance_id"], p["from_reason"], p["to_state"]) for p in lifted] == [
        ("cl-s1", "DELIVERY_STALLED", "CONNECTED")
    ]
    moved = sorted((c.message_id or "", c.payload["to_state"]) for c in changes if c.message_id)
    assert moved == sorted([(stalled[0].id, "DELIVERED"), (stalled[1].id, "READ"), (other.id, "DELIVERED")])


@pytest.mark.skipif(not POSTGRES_URL, reason="transaction ids are PostgreSQL's")
async def test_another_databases_open_transaction_does_not_hold_the_feed_back(guard: Harness) -> None:
    """Transaction ids are cluster-wide: a writing transaction left open in another database of the
    same server (a colleague's test, a bulk load) held every reader below its id until it ended
    (a full suite saw 3 of 4 changes within 30 s). Only this database's transactions hold the
    horizon now; one of this database still does (test_change_log_concurrency)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES_URL).set(drivername="postgresql", database="postgres")
    other = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        async with other.transaction():
            await other.execute("SELECT pg_current_xact_id()")  # it now holds a transaction id
            start = await guard.repo.head_change_cursor()
            await guard.register("cl-f1")
            await guard.connect("cl-f1")
            seen: list[ChangeRecord] = []
            for _ in range(100):  # bounded (~5 s) while the other database's transaction stays open
                seen += (await guard.repo.read_changes(start, limit=50, instance_ids=["cl-f1"])).changes
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert [(c.kind, c.payload["to_state"]) for c in seen] == [
                (ChangeKind.INSTANCE_HEALTH_CHANGED, "CONNECTED")
            ]
    finally:
        await other.close()
