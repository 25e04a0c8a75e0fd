"""Bad input to ListEvents and Subscribe: INVALID_ARGUMENT naming the field, never a retryable
storage failure (issue 21 item 5)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
from statemachine.changes import ChangeCursor
from statemachine.validation import MAX_INSTANCE_IDS
from tests.integration.harness import Harness, rich_error, start_harness, stop_harness


@pytest.fixture
async def guard(database_url: str) -> AsyncIterator[Harness]:
    harness = await start_harness(database_url, event_progress_interval=0.3)
    try:
        yield harness
    finally:
        await stop_harness(harness)


BAD_INPUTS: list[tuple[str, dict[str, Any], str]] = [
    ("nul", {"filter": events_pb2.EventFilter(instance_ids=["INST\x00A"])}, "filter.instance_ids[0]"),
    (
        "too-many",
        {"filter": events_pb2.EventFilter(instance_ids=[f"I-{n}" for n in range(MAX_INSTANCE_IDS + 1)])},
        "filter.instance_ids",
    ),
    ("long-id", {"filter": events_pb2.EventFilter(instance_ids=["ok", "x" * 300])}, "filter.instance_ids[1]"),
]
BAD_CURSORS = ["99999999999999999999999", "²", "c1.²", "c1.OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTkuMQ", "c1." + "A" * 60]


async def _list_error(stub: Any, **fields: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListEvents(events_pb2.ListEventsRequest(**fields))
    return caught.value


async def _subscribe_error(stub: Any, **fields: Any) -> grpc.aio.AioRpcError:
    stream = stub.Subscribe(events_pb2.SubscribeRequest(**fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    return caught.value


@pytest.mark.parametrize(("name", "fields", "field"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
async def test_a_bad_filter_is_invalid_argument_naming_the_field(
    guard: Harness, name: str, fields: dict[str, Any], field: str
) -> None:
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    for error in (
        await _list_error(stub, from_oldest=True, **fields),
        await _subscribe_error(stub, from_now=True, **fields),
    ):
        rich = rich_error(error)
        assert rich.code is grpc.StatusCode.INVALID_ARGUMENT, (name, rich)
        assert field in rich.violations, rich.violations
        assert "Traceback" not in (error.details() or "")


async def test_a_long_repeated_type_filter_is_read_once_per_type(guard: Harness) -> None:
    """40,000 copies of one type are one type (not 40,000 query arguments)."""
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    await guard.register("INST-T")
    types = [events_pb2.EVENT_TYPE_INSTANCE_HEALTH_CHANGED] * 40_000
    page = await stub.ListEvents(
        events_pb2.ListEventsRequest(from_oldest=True, filter=events_pb2.EventFilter(types=types))
    )
    assert page.caught_up


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_a_malformed_cursor_is_invalid_argument(guard: Harness, cursor: str) -> None:
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    listed = rich_error(await _list_error(stub, after_cursor=cursor))
    assert listed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "after_cursor" in listed.violations
    streamed = rich_error(await _subscribe_error(stub, cursor=cursor))
    assert streamed.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "cursor" in streamed.violations


# --- cursors name their log and are tamper-evident (issue 21 item 6) --------------------------


def pushed_ahead(cursor: str, by: int = 1_000_000) -> str:
    """The cursor with its position edited by hand, whatever the format: what a careless or
    malicious client does."""
    prefix, body = cursor[:3], cursor[3:]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if prefix == "c1.":
        xid, seq = raw.decode().split(".")
        raw = bytearray(f"{int(xid) + by}.{int(seq) + by}".encode())
    else:  # log id (8), xid (8), seq (8), signature
        position = int.from_bytes(raw[16:24], "big") + by
        raw[16:24] = position.to_bytes(8, "big")
    return prefix + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


async def _refusal(stub: Any, cursor: str) -> list[Any]:
    """The Subscribe and ListEvents answers to `cursor`, decoded."""
    return [
        rich_error(await _subscribe_error(stub, cursor=cursor)),
        rich_error(await _list_error(stub, after_cursor=cursor)),
    ]


async def _resumes_from(guard: Harness, stub: Any, cursor: str) -> None:
    stream = stub.Subscribe(events_pb2.SubscribeRequest(cursor=cursor))
    instance = f"INST-{uuid.uuid4().hex[:8]}"
    await guard.register(instance)
    await guard.connect(instance)
    for _ in range(50):
        item = await asyncio.wait_for(stream.read(), 10)
        if item.HasField("event"):
            break
    else:
        raise AssertionError("no event after the cursor of the details")
    stream.cancel()


async def test_a_cursor_edited_by_hand_is_refused_with_the_valid_range(guard: Harness) -> None:
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    await guard.register("INST-C")
    cursors = await stub.GetEventCursors(events_pb2.GetEventCursorsRequest())
    for error in await _refusal(stub, pushed_ahead(cursors.head)):
        assert error.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE), error
        assert error.reason in ("CURSOR_TAMPERED", "CURSOR_AHEAD"), error
        assert {"oldest_cursor", "head_cursor"} <= set(error.metadata)
    assert error.reason == "CURSOR_TAMPERED"
    assert error.violations == {"after_cursor": error.violations["after_cursor"]}
    await _resumes_from(guard, stub, error.metadata["head_cursor"])


async def test_a_cursor_of_another_log_is_refused(guard: Harness) -> None:
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    # A signed cursor of another database: the same shape as this log's, another log id and key.
    head = (await stub.GetEventCursors(events_pb2.GetEventCursorsRequest())).head
    size = len(base64.urlsafe_b64decode(head[3:] + "=" * (-len(head[3:]) % 4))) if head.startswith("c2.") else 36
    elsewhere = "c2." + base64.urlsafe_b64encode(secrets.token_bytes(size)).decode().rstrip("=")
    for error in await _refusal(stub, elsewhere):
        assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_OTHER_LOG")
        assert {"oldest_cursor", "head_cursor"} <= set(error.metadata)
    await _resumes_from(guard, stub, error.metadata["oldest_cursor"])


async def test_a_signed_cursor_ahead_of_the_head_is_refused(guard: Harness) -> None:
    """As after restoring an older backup of the same database: its own signature, a position
    the log has not reached."""
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    assert guard.app.feed is not None
    head = await guard.repo.head_change_cursor()
    ahead = guard.app.feed.cursors.encode(ChangeCursor(head.xid + 1000, head.seq + 1000))
    for error in await _refusal(stub, ahead):
        assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_AHEAD")
    await _resumes_from(guard, stub, error.metadata["head_cursor"])


async def test_a_cursor_of_the_previous_version_is_accepted_and_upgraded(guard: Harness) -> None:
    """`c1.` cursors (unsigned, no log id) still resume, within the log's range; every cursor
    handed out afterwards is a signed one."""
    stub = events_pb2_grpc.EventServiceStub(guard.channel)
    await guard.register("INST-L")
    head = await guard.repo.head_change_cursor()
    legacy = head.encode()
    assert legacy.startswith("c1.")
    page = await stub.ListEvents(events_pb2.ListEventsRequest(after_cursor=legacy))
    assert page.next_cursor.startswith("c2.")
    for error in await _refusal(stub, pushed_ahead(legacy)):
        assert (error.code, error.reason) == (grpc.StatusCode.OUT_OF_RANGE, "CURSOR_AHEAD")
