"""Requests whose bytes are not the method's protobuf: INVALID_ARGUMENT/MALFORMED_REQUEST, not UNKNOWN.

grpc.aio deserializes a request before any servicer or interceptor code sees it; a deserializer
that raises makes grpc answer UNKNOWN and log a full traceback ("Unexpected error raised by
servicer method"), once per request — a flood from any client that sends garbage. Here every
method handler is rewrapped once, at registration (no per-call interceptor): its deserializer
returns a marker instead of raising and its behaviour answers the marker with the rich status.
The log line is rate-limited: one warning per interval, with the number suppressed since.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

from services.rpc.errors import abort, build_status

log = logging.getLogger("wapi_guard.grpc")
MALFORMED_REQUEST = "MALFORMED_REQUEST"
LOG_INTERVAL = 60.0


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What the guarded deserializer returns for bytes the message type cannot parse."""

    error: str
    size: int


class RateLimitedLog:
    """At most one record per `interval` seconds; the next one says how many were dropped."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next = float("-inf")
        self.suppressed = 0

    def warning(self, message: str, *args: Any) -> None:
        now = self._clock()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self.interval
        suppressed, self.suppressed = self.suppressed, 0
        log.warning(message + " (%d more suppressed in the last %.0f s)", *args, suppressed, self.interval)


_log = RateLimitedLog()


def _guard_deserializer(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as error:  # DecodeError, and anything a parser may raise on garbage
            return Undecodable(type(error).__name__, len(raw))

    return decode


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], method: str, bad: Undecodable) -> NoReturn:
    _log.warning("undecodable request to %s: %d bytes, %s", method, bad.size, bad.error)
    status = build_status(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request body is not a valid {method} message",
        MALFORMED_REQUEST,
        {"method": method},
    )
    await abort(context, status)


def _unary_request(behaviour: Any, method: str) -> Any:
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, method, request)
            async for item in behaviour(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, method, request)
        return await behaviour(request, context)

    return unary


def _stream_request(behaviour: Any, method: str) -> Any:
    def checked(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        async def items() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    await _refuse(context, method, request)
                yield request

        return items()

    if inspect.isasyncgenfunction(behaviour):

        async def stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            async for item in behaviour(checked(requests, context), context):
                yield item

        return stream

    async def unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await behaviour(checked(requests, context), context)

    return unary


def _bytes_or(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A response serializer that passes bytes through: a handler may hand over a message it
    serialized once for many calls (the event stream's events)."""
    if serialize is None:
        return None

    def serializer(message: Any) -> bytes:
        return message if isinstance(message, bytes) else serialize(message)

    return serializer


def guard_handler(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
    codec: dict[str, Any] = {
        "request_deserializer": _guard_deserializer(handler.request_deserializer),
        "response_serializer": _bytes_or(handler.response_serializer),
    }
    if codec["request_deserializer"] is None:
        return handler
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(_unary_request(handler.unary_unary, method), **codec)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(_unary_request(handler.unary_stream, method), **codec)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(_stream_request(handler.stream_unary, method), **codec)
    return grpc.stream_stream_rpc_method_handler(_stream_request(handler.stream_stream, method), **codec)


class _GuardedGeneric(grpc.GenericRpcHandler):
    """A registered generic handler whose method handlers are guarded, each built once."""

    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._guarded: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = str(handler_call_details.method)
        try:
            return self._guarded[method]
        except KeyError:
            found = self._inner.service(handler_call_details)
            guarded = guard_handler(found, method) if found is not None else None
            if len(self._guarded) < 1024:  # method names come from clients: bounded
                self._guarded[method] = guarded
            return guarded


class DecodingGuard:
    """Stands in for the server in `add_*Servicer_to_server` calls: registers guarded handlers."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_GuardedGeneric(h) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        guarded = {name: guard_handler(h, f"/{service}/{name}") for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, guarded)
