"""Bad input to ListEvents and Subscribe: INVALID_ARGUMENT naming the field, never a retryable
storage failure (issue 21 item 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.api.wapiguard.v1 import events_pb2, events_pb2_grpc
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
