"""Every method the real server registers refuses a missing token, whatever its streaming kind."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.harness import Harness, start_harness, stop_harness

ADMIN = "admin-token-0123456789abcdef"
OPEN_WHEN_HEALTH_OPEN = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


async def registered_methods(harness: Harness) -> list[MethodDescriptor]:
    """The server's own list of services (reflection, with a valid token), resolved to methods."""
    stub = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names: list[str] = []
    async for answer in stub.ServerReflectionInfo(iter([request]), metadata=(("authorization", f"Bearer {ADMIN}"),)):
        names = [s.name for s in answer.list_services_response.service]
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    pool = descriptor_pool.Default()
    return [m for name in names for m in pool.FindServiceByName(name).methods]


async def call_without_token(channel: grpc.aio.Channel, method: MethodDescriptor) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    codec = {"request_serializer": bytes, "response_deserializer": bytes}
    try:
        if method.client_streaming and method.server_streaming:
            async for _ in channel.stream_stream(path, **codec)(iter([b""]), timeout=2):
                pass
        elif method.client_streaming:
            await channel.stream_unary(path, **codec)(iter([b""]), timeout=2)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path, **codec)(b"", timeout=2):
                pass
        else:
            await channel.unary_unary(path, **codec)(b"", timeout=2)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.fixture(params=[False, True], ids=["health-closed", "health-open"])
async def guard(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[tuple[Harness, bool]]:
    harness = await start_harness(database_url, api_tokens=f"admin:{ADMIN}", auth_open_health=request.param)
    try:
        yield harness, request.param
    finally:
        await stop_harness(harness)


async def test_every_registered_method_refuses_a_missing_token_unless_explicitly_open(
    guard: tuple[Harness, bool],
) -> None:
    harness, health_open = guard
    methods = await registered_methods(harness)
    kinds = {(m.client_streaming, m.server_streaming) for m in methods}
    assert (True, True) in kinds  # reflection: a streamed request
    assert (False, True) in kinds
    assert (False, False) in kinds
    for method in methods:
        code = await call_without_token(harness.channel, method)
        is_open = health_open and method.containing_service.full_name in OPEN_WHEN_HEALTH_OPEN
        if is_open:
            assert code is not grpc.StatusCode.UNAUTHENTICATED, method.full_name
        else:
            assert code is grpc.StatusCode.UNAUTHENTICATED, method.full_name
