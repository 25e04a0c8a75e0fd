"""Domain errors → gRPC status with google.rpc details (ErrorInfo, LocalizedMessage, BadRequest).

`context.abort(code, details, trailing_metadata)` is used instead of `abort_with_status`: the
OpenTelemetry aio server wrapper (opentelemetry-instrumentation-grpc) only sees `abort`, and the
bytes on the wire are the same `grpc-status-details-bin` trailer.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from adapters.deadline import request_scope
from services.app.errors import classify
from services.i18n import reason_text, resolve_lang, violation_text
from statemachine.errors import (
    GuardError,
)

DOMAIN = "wapiguard.v1"
log = logging.getLogger("wapi_guard.grpc")

T = TypeVar("T")


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@functools.lru_cache(maxsize=256)
def _localized(reason: str, locale: str) -> any_pb2.Any | None:
    """Packed once per (reason, locale): the texts are constants (a few reasons × two locales)."""
    text = reason_text(reason, locale)
    if text == reason:
        return None
    return _pack(error_details_pb2.LocalizedMessage(locale=locale, message=text))


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    metadata: dict[str, str],
    locale: str = "pt-BR",
    violations: list[tuple[str, str]] | None = None,
    retry_after: float | None = None,
) -> grpc.Status:
    details = [_pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata))]
    localized = _localized(reason, locale)
    if localized is not None:
        details.append(localized)
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=f,
                            description=d,
                            localized_message=error_details_pb2.LocalizedMessage(
                                locale=locale, message=violation_text(d, locale)
                            ),
                        )
                        for f, d in violations
                    ]
                )
            )
        )
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    converted: grpc.Status = rpc_status.to_status(status)
    return converted


def locale_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's `accept-language` metadata, read like the status page reads the header."""
    for key, value in context.invocation_metadata() or ():
        if key == "accept-language" and isinstance(value, str):
            return resolve_lang(None, value)
    return resolve_lang(None)


def status_for(error: BaseException, locale: str = "pt-BR") -> grpc.Status | None:
    """The status to answer for an exception (services/app/errors.py classifies it), or None when
    it is a bug (re-raised as INTERNAL)."""
    found = classify(error)
    if found is None:
        return None
    code = getattr(grpc.StatusCode, found.outcome.value)
    return build_status(code, found.message, found.reason, found.metadata, locale, found.violations, found.retry_after)


async def abort(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("unreachable")  # pragma: no cover


def grpc_errors(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[T]]:
    """Maps domain and storage errors of a unary handler to rich gRPC statuses, in one place."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            with request_scope(context.time_remaining()):
                return await handler(self, request, context)
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            status = status_for(error, locale_of(context))
            if status is None:
                log.exception("unhandled error in %s", handler.__name__)
                raise
            if status.code is grpc.StatusCode.UNAVAILABLE and not isinstance(error, GuardError):
                log.warning("storage error in %s: %s", handler.__name__, type(error).__name__)
            await abort(context, status)

    return wrapper
