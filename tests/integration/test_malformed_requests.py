"""Bytes that are not the method's protobuf: INVALID_ARGUMENT/MALFORMED_REQUEST, rate-limited logging."""

from __future__ import annotations

import logging

import grpc
import pytest

from services.api.wapiguard.v1 import send_pb2
from services.rpc.decoding import RateLimitedLog
from tests.integration.harness import Harness, rich_error

GARBAGE = (
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1, a length far past the end
    b"\x08",  # field 1 as a varint, and then nothing
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a varint tag that never ends
)


def raw_unary(guard: Harness, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return guard.channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def test_garbage_answers_invalid_argument_and_logs_once(guard: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    methods = (
        "/wapiguard.v1.SendService/SendMessage",
        "/wapiguard.v1.WebhookService/IngestEvent",
        "/wapiguard.v1.InstanceHealthService/GetInstanceHealth",
        "/grpc.health.v1.Health/Check",
    )
    calls = 0
    for method in methods:
        for payload in GARBAGE:
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await raw_unary(guard, method)(payload, timeout=5)
                calls += 1
                error = rich_error(caught.value)
                assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST"), method
                assert error.metadata["method"] == method

    assert calls == 60
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a client's garbage"
    mentions = [r for r in caplog.records if "undecodable" in r.getMessage() or "Unexpected" in r.getMessage()]
    assert len(mentions) <= 1, [r.getMessage() for r in mentions]

    # The server is fine afterwards, and well-formed requests still decode.
    ok = await guard.send.ListMessages(send_pb2.ListMessagesRequest(), timeout=5)
    assert list(ok.messages) == []


async def test_garbage_to_a_server_stream_is_invalid_argument_too(guard: Harness) -> None:
    stream: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = guard.channel.unary_stream(
        "/wapiguard.v1.InstanceHealthService/WatchInstances", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _item in stream(GARBAGE[0], timeout=5):
            pass
    assert (rich_error(caught.value).code, rich_error(caught.value).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    )


def test_the_log_limit_says_how_many_it_dropped(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(interval=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="wapi_guard.grpc")
    for _ in range(100):
        limited.warning("bad request %s", "x")
    now[0] = 61.0
    limited.warning("bad request %s", "y")
    messages = [r.getMessage() for r in caplog.records if r.name == "wapi_guard.grpc"]
    assert messages == [
        "bad request x (0 more suppressed in the last 60 s)",
        "bad request y (99 more suppressed in the last 60 s)",
    ]
