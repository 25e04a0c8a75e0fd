"""EventService over real gRPC and a real database: what a consuming CRM would check."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import delete, select

from adapters.persistence import changelog
from adapters.persistence.schema import change_log
from services.api.wapiguard.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    instance_health_pb2,
    send_pb2,
    webhook_pb2,
)
from statemachine.changes import Change, ChangeKind
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness

TIMEOUT = 10.0
RECEIVED = {
    "event": "webhookReceived",
    "instanceId": "INST-A",
    "connectedPhone": "5511999990000",
    "isGroup": False,
    "fromMe": False,
    "chat": {"id": "5511988887777"},
    "sender": {"id": "5511988887777", "pushName": "Maria"},
    "msgContent": {"extendedTextMessage": {"text": "quero o boleto"}},
}


def events_stub(h: Harness) -> events_pb2_grpc.EventServiceAsyncStub:
    return events_pb2_grpc.EventServiceStub(h.channel)


async def next_events(
    stream: Any, count: int, *, timeout: float = TIMEOUT, progress: list[str] | None = None
) -> list[events_pb2.Event]:
    """Reads until `count` events arrived (progress items are collected aside)."""
    out: list[events_pb2.Event] = []

    async def read() -> None:
        while len(out) < count:
            item = await stream.read()
            assert item is not grpc.aio.EOF, "stream ended early"
            if item.HasField("event"):
                out.append(item.event)
            elif progress is not None:
                progress.append(item.progress.cursor)

    await asyncio.wait_for(read(), timeout)
    return out


async def first_progress(stream: Any, *, timeout: float = TIMEOUT) -> str:
    async def read() -> str:
        while True:
            item = await stream.read()
            assert item is not grpc.aio.EOF
            if item.HasField("progress"):
                return str(item.progress.cursor)

    return await asyncio.wait_for(read(), timeout)


async def send_text(h: Harness, instance_id: str, key: str) -> Any:
    return await h.send.SendMessage(
        send_pb2.SendMessageRequest(
            instance_id=instance_id, to="5515981121710", idempotency_key=key, text=send_pb2.TextContent(body="Olá")
        )
    )


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url, event_progress_interval=0.3)
    try:
        yield harness
    finally:
        await stop_harness(harness)


async def test_message_story_arrives_in_order_and_resumes_from_any_cursor(guard: Harness) -> None:
    await guard.register("INST-A")
    await guard.connect("INST-A")
    stub = events_stub(guard)
    stream = stub.Subscribe(
        events_pb2.SubscribeRequest(
            from_now=True, filter=events_pb2.EventFilter(types=[events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED])
        )
    )
    await first_progress(stream)  # subscribed: everything after this point arrives
    msg = await send_text(guard, "INST-A", "story-1")
    await guard.webhook(
        {"event": "webhookStatus", "instanceId": "INST-A", "messageId": msg.provider_message_id, "status": "DELIVERED"}
    )
    await guard.webhook(
        {"event": "webhookStatus", "instanceId": "INST-A", "messageId": msg.provider_message_id, "status": "READ"}
    )
    got = await next_events(stream, 4)
    stream.cancel()
    changes = [e.message_state_changed for e in got]
    assert [(c.from_state, c.to_state) for c in changes] == [
        (common_pb2.MESSAGE_STATE_UNSPECIFIED, common_pb2.MESSAGE_STATE_PENDING),
        (common_pb2.MESSAGE_STATE_PENDING, common_pb2.MESSAGE_STATE_SENT),
        (common_pb2.MESSAGE_STATE_SENT, common_pb2.MESSAGE_STATE_DELIVERED),
        (common_pb2.MESSAGE_STATE_DELIVERED, common_pb2.MESSAGE_STATE_READ),
    ]
    assert all(e.message_id == msg.id and e.type_name == "message.state_changed" for e in got)
    assert [c.version for c in changes] == sorted(c.version for c in changes)
    assert len({e.id for e in got}) == 4

    # Resume after the first one: exactly the other three, same ids, same order.
    again = stub.Subscribe(
        events_pb2.SubscribeRequest(
            cursor=got[0].cursor, filter=events_pb2.EventFilter(types=[events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED])
        )
    )
    rest = await next_events(again, 3)
    assert [e.id for e in rest] == [e.id for e in got[1:]]
    # …and nothing more until something happens: the next item is a progress message.
    assert await first_progress(again)
    again.cancel()

    # The catch-up list gives the same events in pages.
    page = await stub.ListEvents(
        events_pb2.ListEventsRequest(
            after_cursor=got[0].cursor,
            page_size=1,
            filter=events_pb2.EventFilter(types=[events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED]),
        )
    )
    assert [e.id for e in page.events] == [got[1].id]
    assert not page.caught_up
    page2 = await stub.ListEvents(
        events_pb2.ListEventsRequest(
            after_cursor=page.next_cursor,
            page_size=10,
            filter=events_pb2.EventFilter(types=[events_pb2.EVENT_TYPE_MESSAGE_STATE_CHANGED]),
        )
    )
    assert [e.id for e in page2.events] == [e.id for e in got[2:]]
    assert page2.caught_up


async def test_idle_stream_gets_progress_with_a_safe_resume_cursor(guard: Harness) -> None:
    await guard.register("INST-A")
    stub = events_stub(guard)
    stream = stub.Subscribe(events_pb2.SubscribeRequest(from_now=True))
    bookmark = await first_progress(stream)
    stream.cancel()
    await guard.connect("INST-A")  # happens after the bookmark
    resumed = stub.Subscribe(events_pb2.SubscribeRequest(cursor=bookmark))
    got = await next_events(resumed, 1)
    resumed.cancel()
    assert got[0].type == events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED
    health = got[0].instance_health_changed
    assert health.to_state == common_pb2.INSTANCE_STATE_CONNECTED
    assert health.phone == "5511999990000"


async def test_customer_message_arrives_normalised(guard: Harness) -> None:
    await guard.register("INST-A")
    stub = events_stub(guard)
    stream = stub.Subscribe(
        events_pb2.SubscribeRequest(
            from_now=True, filter=events_pb2.EventFilter(types=[events_pb2.EVENT_TYPE_MESSAGE_RECEIVED])
        )
    )
    await first_progress(stream)
    await guard.webhook({**RECEIVED, "messageId": "3EB0CUSTOMER01", "moment": 1_749_132_337})
    (event,) = await next_events(stream, 1)
    stream.cancel()
    inbound = event.message_received
    assert event.instance_id == "INST-A"
    assert inbound.provider_message_id == "3EB0CUSTOMER01"
    assert (inbound.chat_id, inbound.sender_phone, inbound.push_name) == ("5511988887777", "5511988887777", "Maria")
    assert (inbound.kind, inbound.text) == ("text", "quero o boleto")
    raw = json_format.MessageToDict(inbound.raw)
    assert raw["msgContent"]["extendedTextMessage"]["text"] == "quero o boleto"


async def test_bad_cursor_is_invalid_argument(guard: Harness) -> None:
    stream = events_stub(guard).Subscribe(events_pb2.SubscribeRequest(cursor="garbage"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "cursor" in error.violations


async def test_pruned_cursor_is_out_of_range_with_the_oldest_valid_cursor(guard: Harness) -> None:
    await guard.register("INST-A")
    for _ in range(3):
        await guard.webhook({**RECEIVED, "messageId": f"3EB0PRUNE{_}", "moment": 1_749_132_337 + _})
    stub = events_stub(guard)
    listed = await stub.ListEvents(events_pb2.ListEventsRequest(from_oldest=True, page_size=100))
    assert len(listed.events) == 3
    old_cursor = listed.events[0].cursor
    # Retention prunes the two oldest rows.
    async with guard.repo.engine.begin() as conn:
        seqs = (await conn.execute(select(change_log.c.seq).order_by(change_log.c.seq).limit(2))).scalars().all()
        await conn.execute(delete(change_log).where(change_log.c.seq.in_(seqs)))
    stream = stub.Subscribe(events_pb2.SubscribeRequest(cursor=old_cursor))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.OUT_OF_RANGE
    assert error.reason == "CURSOR_EXPIRED"
    with pytest.raises(grpc.aio.AioRpcError) as listed_error:
        await stub.ListEvents(events_pb2.ListEventsRequest(after_cursor=old_cursor))
    assert listed_error.value.code() is grpc.StatusCode.OUT_OF_RANGE
    # The oldest cursor of the details is valid and leads to what is left.
    resumed = stub.Subscribe(events_pb2.SubscribeRequest(cursor=error.metadata["oldest_cursor"]))
    (event,) = await next_events(resumed, 1)
    resumed.cancel()
    assert event.id == listed.events[2].id


async def test_scoped_token_sees_only_its_instances(database_url: str) -> None:
    crm, ops = "crm-token-0123456789", "ops-token-0123456789"
    h = await start_harness(database_url, api_tokens=f"crm:{crm}@INST-A,ops:{ops}", event_progress_interval=0.3)
    try:
        ops_md = (("authorization", f"Bearer {ops}"),)
        crm_md = (("authorization", f"Bearer {crm}"),)
        for instance in ("INST-A", "INST-B"):
            await h.health.RegisterInstance(
                instance_health_pb2.RegisterInstanceRequest(
                    instance_id=instance, name=instance, token="tok-secret-123456", skip_probe=True
                ),
                metadata=ops_md,
            )
        stub = events_stub(h)
        stream = stub.Subscribe(events_pb2.SubscribeRequest(from_now=True), metadata=crm_md)
        await first_progress(stream)
        for instance in ("INST-B", "INST-A", "INST-B"):
            body = {**RECEIVED, "instanceId": instance, "messageId": f"3EB0{instance}X", "moment": 1}
            await h.webhooks.IngestEvent(
                webhook_pb2.IngestEventRequest(payload=json.dumps(body).encode()), metadata=ops_md
            )
        await asyncio.sleep(0.5)
        progress: list[str] = []
        got = await next_events(stream, 1, progress=progress)
        assert [e.instance_id for e in got] == ["INST-A"]
        # Nothing else comes through: the next item is progress, not INST-B's event.
        assert await first_progress(stream)
        stream.cancel()
        listed = await stub.ListEvents(events_pb2.ListEventsRequest(from_oldest=True), metadata=crm_md)
        assert {e.instance_id for e in listed.events} == {"INST-A"}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListEvents(
                events_pb2.ListEventsRequest(filter=events_pb2.EventFilter(instance_ids=["INST-B"])), metadata=crm_md
            )
        assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    finally:
        await stop_harness(h)


async def test_slow_subscriber_is_cut_off_with_bounded_memory_and_resumes(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A subscriber that stops reading (its transport window full) for longer than the timeout
    while events wait for it is cut off, logged with its principal and counted; memory stays
    bounded (the shared window), and it resumes without loss."""
    buffer = 10
    h = await start_harness(
        database_url,
        event_subscriber_buffer=buffer,
        event_subscriber_timeout=0.5,
        event_progress_interval=0.3,
        http_port=0,
    )
    try:
        await h.register("INST-A")
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{h.app.grpc_port}",
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)],
        )
        stub = events_pb2_grpc.EventServiceStub(channel)
        stream = stub.Subscribe(events_pb2.SubscribeRequest(from_now=True))
        bookmark = await first_progress(stream)
        total = 600
        big = "x" * 900  # ~1 KB per event: the transport's window fills after a few dozen
        for n in range(total):
            body = {**RECEIVED, "messageId": f"3EB0SLOW{n:05d}", "moment": 1 + n, "msgContent": {"conversation": big}}
            await h.webhook(body)
            feed = h.app.feed
            assert feed is not None
            assert feed.held() <= buffer
        # Cut off (logged, counted) while it is still not reading: not only once it reads again.
        feed = h.app.feed
        assert feed is not None
        for _ in range(100):
            if feed.cut_offs:
                break
            await asyncio.sleep(0.05)
        assert feed.cut_offs == 1
        received: list[events_pb2.Event] = []

        async def drain() -> None:
            for _ in range(total + 100):
                item: Any = await asyncio.wait_for(stream.read(), TIMEOUT)
                if item is grpc.aio.EOF:
                    return
                if item.HasField("event"):
                    received.append(item.event)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await drain()
        error = rich_error(caught.value)
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.reason == "SUBSCRIBER_TOO_SLOW"
        assert len(received) < total
        assert h.app.feed is not None
        assert h.app.feed.cut_offs == 1
        cut = [r.getMessage() for r in caplog.records if "too slow" in r.getMessage()]
        assert len(cut) == 1
        assert "read nothing for" in cut[0]
        # Operators see it: the status page's snapshot and /metrics.
        base = f"http://127.0.0.1:{h.app.http_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/status/api/snapshot?lang=en") as response:
                snapshot = await response.json()
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
        assert snapshot["event_streams"]["cut_off_too_slow"] == 1
        (line,) = [x for x in metrics.splitlines() if x.startswith("wapiguard_events_subscribers_cut_off_total")]
        assert line.endswith(" 1.0")
        resume = error.metadata["resume_cursor"]
        if received:
            assert resume == received[-1].cursor
        else:
            assert resume == bookmark
        await channel.close()
        # Resuming from the cursor delivers the rest: every event exactly once, in order.
        again = events_stub(h).Subscribe(events_pb2.SubscribeRequest(cursor=resume))
        rest = await next_events(again, total - len(received), timeout=30)
        again.cancel()
        ids = [e.message_received.provider_message_id for e in [*received, *rest]]
        assert ids == [f"3EB0SLOW{n:05d}" for n in range(total)]
    finally:
        await stop_harness(h)


async def test_a_burst_larger_than_the_buffer_never_cuts_off_subscribers_that_keep_reading(database_url: str) -> None:
    """Issue 21 item 4: 2,500 events committed at once (as when a long transaction releases the
    horizon) with a shared window of 100: five subscribers reading continuously get every event,
    in order, and none is closed as too slow; the process holds at most the window."""
    buffer, total = 100, 2500
    h = await start_harness(database_url, event_subscriber_buffer=buffer, event_progress_interval=0.3)
    try:
        stub = events_stub(h)
        streams = [stub.Subscribe(events_pb2.SubscribeRequest(from_now=True)) for _ in range(5)]
        for stream in streams:
            await first_progress(stream)
        at = datetime.now(UTC)
        burst = [
            Change(ChangeKind.INSTANCE_HEALTH_CHANGED, f"BURST-{n % 7}", at, {"instance_id": f"BURST-{n % 7}", "n": n})
            for n in range(total)
        ]
        async with h.repo.engine.begin() as conn:
            await changelog.append(conn, burst)
        feed = h.app.feed
        assert feed is not None
        results = await asyncio.gather(*(next_events(s, total, timeout=60) for s in streams))
        assert feed.held() <= buffer
        in_log: list[str] = []
        cursor = None
        for _ in range(10):
            page = await h.repo.read_changes(cursor, limit=1000, kinds=[ChangeKind.INSTANCE_HEALTH_CHANGED])
            in_log += [c.event_id for c in page.changes if c.instance_id.startswith("BURST-")]
            cursor = page.cursor
        assert len(in_log) == total
        assert all([e.id for e in got] == in_log for got in results)  # all, once, in log order
        assert feed.cut_offs == 0
        for stream in streams:
            stream.cancel()
    finally:
        await stop_harness(h)


async def test_an_event_is_encoded_once_for_all_its_streams(guard: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 21 item 8: five unfiltered streams, one change: one SubscribeResponse is built and
    serialized for all of them (not one per stream); every stream gets the same bytes."""
    built: list[str] = []
    original = events_pb2.SubscribeResponse

    def counting(**fields: Any) -> Any:
        if "event" in fields:
            built.append(fields["event"].id)
        return original(**fields)

    stub = events_stub(guard)  # the client's deserializer is bound here, before the count
    monkeypatch.setattr(events_pb2, "SubscribeResponse", counting)
    await guard.register("INST-E")
    streams = [stub.Subscribe(events_pb2.SubscribeRequest(from_now=True)) for _ in range(5)]
    for stream in streams:
        await first_progress(stream)
    await guard.connect("INST-E")
    got = [await next_events(stream, 1) for stream in streams]
    for stream in streams:
        stream.cancel()
    assert len({e[0].SerializeToString() for e in got}) == 1
    assert built == [got[0][0].id]


async def test_a_stream_may_ask_for_several_events_per_response(guard: Harness) -> None:
    """max_events_per_response: a burst arrives in few messages (as etcd's WatchResponse), the
    same events in the same order as a one-per-message stream; every event keeps its cursor."""
    stub = events_stub(guard)
    single = stub.Subscribe(events_pb2.SubscribeRequest(from_now=True))
    batched = stub.Subscribe(events_pb2.SubscribeRequest(from_now=True, max_events_per_response=50))
    await first_progress(single)
    await first_progress(batched)
    at = datetime.now(UTC)
    total = 120
    async with guard.repo.engine.begin() as conn:
        await changelog.append(
            conn,
            [
                Change(ChangeKind.INSTANCE_HEALTH_CHANGED, "BATCH-1", at, {"instance_id": "BATCH-1"})
                for _ in range(total)
            ],
        )
    one_by_one = await next_events(single, total)
    got: list[events_pb2.Event] = []
    messages = 0

    async def read() -> None:
        nonlocal messages
        while len(got) < total:
            item: Any = await batched.read()
            assert item is not grpc.aio.EOF
            if item.HasField("events"):
                messages += 1
                assert 1 <= len(item.events.events) <= 50
                got.extend(item.events.events)
            assert not item.HasField("event")

    await asyncio.wait_for(read(), TIMEOUT)
    single.cancel()
    batched.cancel()
    assert [e.id for e in got] == [e.id for e in one_by_one]
    assert [e.cursor for e in got] == [e.cursor for e in one_by_one]
    assert messages < total / 10
