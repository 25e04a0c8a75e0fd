"""What an exception means to a caller, whatever the transport: the canonical outcome (named like
google.rpc's codes), the reason code, and the details a caller may act on. The gRPC edge turns it
into a rich status (services/rpc/errors.py); the HTTP surface into a status code and a page."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from statemachine.domain import Reason
from statemachine.errors import (
    GuardError,
    IdempotencyConflict,
    InstanceNotFound,
    InvalidPayload,
    InvalidRequest,
    MessageNotFound,
    NotHeld,
    NotRetryable,
    OutcomeUnknown,
    ProviderFailed,
    RecoveryFailed,
    RecoveryRefused,
    SendBlocked,
    SendInProgress,
    SendPaced,
)
from statemachine.ports import ConcurrentUpdateError


class Outcome(Enum):
    """The canonical error outcomes (google.rpc.Code's names; gRPC maps them one to one)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class Classified:
    outcome: Outcome
    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)
    violations: list[tuple[str, str]] | None = None
    retry_after: float | None = None
    domain: bool = True  # a GuardError (False: storage trouble or a lost race)


# Exceptions that mean "storage unavailable": the wired store's own (`unavailable_errors`, added
# by the composition root) and the OS's.
_unavailable: tuple[type[BaseException], ...] = (OSError, TimeoutError)


def treat_as_unavailable(errors: tuple[type[BaseException], ...]) -> None:
    """Answers the store's `errors` as STORAGE_UNAVAILABLE (called once when the store is wired)."""
    global _unavailable
    _unavailable = tuple(dict.fromkeys((*_unavailable, *errors)))


def _provider_outcome(reason: Reason) -> Outcome:
    if reason is Reason.PROVIDER_TIMEOUT:
        return Outcome.DEADLINE_EXCEEDED
    if reason in (Reason.TOKEN_INVALID, Reason.INSTANCE_NOT_FOUND):
        return Outcome.FAILED_PRECONDITION
    return Outcome.UNAVAILABLE


def outcome_of(error: GuardError) -> Outcome:
    if error.reason is Reason.PERMISSION_DENIED:
        return Outcome.PERMISSION_DENIED
    if isinstance(error, (InvalidRequest, InvalidPayload)):
        return Outcome.INVALID_ARGUMENT
    if isinstance(error, (InstanceNotFound, MessageNotFound)):
        return Outcome.NOT_FOUND
    if isinstance(error, (SendBlocked, NotRetryable, OutcomeUnknown, NotHeld)):
        return Outcome.FAILED_PRECONDITION
    if isinstance(error, SendInProgress):
        return Outcome.ABORTED
    if isinstance(error, SendPaced):
        return Outcome.RESOURCE_EXHAUSTED
    if isinstance(error, RecoveryRefused):
        if error.reason is Reason.RECOVERY_RATE_LIMITED:
            return Outcome.RESOURCE_EXHAUSTED
        if error.reason is Reason.RECOVERY_IN_PROGRESS:
            return Outcome.ABORTED
        return Outcome.FAILED_PRECONDITION
    if isinstance(error, (RecoveryFailed, ProviderFailed)):
        return _provider_outcome(error.reason)
    if isinstance(error, IdempotencyConflict):
        return Outcome.ALREADY_EXISTS
    return Outcome.INTERNAL


def classify(error: BaseException) -> Classified | None:
    """What to answer for an exception, or None when it is a bug (the edge answers INTERNAL)."""
    if isinstance(error, GuardError):
        violations = [(v.field, v.description) for v in error.violations] if isinstance(error, InvalidRequest) else None
        retry_after = error.retry_after if isinstance(error, (SendInProgress, RecoveryRefused, SendPaced)) else None
        return Classified(outcome_of(error), error.reason.value, str(error), error.metadata, violations, retry_after)
    if isinstance(error, ConcurrentUpdateError):
        return Classified(Outcome.ABORTED, Reason.CONCURRENT_UPDATE.value, "concurrent update, retry", domain=False)
    if isinstance(error, _unavailable):
        # Never a fake success: the caller is told the store is unavailable and may retry.
        return Classified(Outcome.UNAVAILABLE, "STORAGE_UNAVAILABLE", "storage unavailable", domain=False)
    return None
