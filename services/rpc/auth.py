"""Caller authentication: bearer tokens in gRPC metadata, optionally scoped to instances.

Tokens (services/app/principals.py) are compared in constant time and never appear in logs or
errors. With no tokens configured the API is open (development and the embedded demo); production
sets them (see deploy/).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

import grpc

from services.app.principals import Principal, current_principal, match_token
from services.rpc.errors import build_status
from statemachine.domain import Reason

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: list[tuple[Principal, bytes]], *, open_health: bool = True) -> None:
        self._tokens = tokens
        self._open_health = open_health

    def _authenticate(self, metadata: Iterable[tuple[str, Any]]) -> Principal | None:
        header = ""
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                header = value
                break
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return None
        return match_token(self._tokens, presented.strip())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        details = handler_call_details
        method = details.method or ""
        handler = await continuation(details)
        if handler is None or (self._open_health and method.startswith(OPEN_PREFIXES)):
            return handler
        principal = self._authenticate(details.invocation_metadata or ())
        if principal is None:
            return _deny(handler)
        return _with_principal(handler, principal)


def _unauthenticated() -> grpc.Status:
    return build_status(
        grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token", Reason.UNAUTHENTICATED.value, {}
    )


def _deny(handler: Handler) -> Handler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        status = _unauthenticated()
        await context.abort(status.code, status.details, status.trailing_metadata)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        status = _unauthenticated()
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield  # pragma: no cover

    return _rewrap(handler, refuse, refuse_stream, refuse, refuse_stream)


def _with_principal(handler: Any, principal: Principal) -> Handler:
    async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        current_principal.set(principal)
        return await handler.unary_unary(request, context)

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        current_principal.set(principal)
        async for item in handler.unary_stream(request, context):
            yield item

    async def stream_unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        current_principal.set(principal)
        return await handler.stream_unary(requests, context)

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        current_principal.set(principal)
        async for item in handler.stream_stream(requests, context):
            yield item

    return _rewrap(handler, unary_unary, unary_stream, stream_unary, stream_stream)


def _rewrap(handler: Handler, unary_unary: Any, unary_stream: Any, stream_unary: Any, stream_stream: Any) -> Handler:
    """The same method with our behaviour, whatever its kind: no kind bypasses authentication."""
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_unary, **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(unary_stream, **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(stream_unary, **codec)
    return grpc.stream_stream_rpc_method_handler(stream_stream, **codec)
