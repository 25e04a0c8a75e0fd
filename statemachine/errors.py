"""Domain errors. The gRPC edge maps each to a status code plus google.rpc details."""

from __future__ import annotations

from statemachine.domain import InstanceState, MessageRecord, Reason
from statemachine.validation import Violation


class GuardError(Exception):
    """Base: carries a machine-readable reason and string metadata for ErrorInfo."""

    def __init__(self, reason: Reason, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = metadata or {}


class InvalidRequest(GuardError):
    def __init__(self, violations: list[Violation]) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(Reason.INVALID_ARGUMENT, f"invalid request: {summary}")
        self.violations = violations


def _short(value: str) -> str:
    """Caller-supplied ids echoed in errors are bounded (gRPC metadata is limited to 8 KiB)."""
    return value if len(value) <= 80 else value[:77] + "..."


class InstanceNotFound(GuardError):
    def __init__(self, instance_id: str) -> None:
        super().__init__(
            Reason.INSTANCE_NOT_FOUND,
            f"instance {_short(instance_id)!r} is not registered",
            {"instance_id": _short(instance_id)},
        )


class MessageNotFound(GuardError):
    def __init__(self, message_id: str) -> None:
        super().__init__(
            Reason.MESSAGE_NOT_FOUND, f"message {_short(message_id)!r} not found", {"message_id": _short(message_id)}
        )


class SendBlocked(GuardError):
    """Preflight refused the send; the message is stored as FAILED with this reason."""

    def __init__(self, reason: Reason, message: MessageRecord, instance_state: InstanceState) -> None:
        why = {
            Reason.RECIPIENT_OPTED_OUT: "the recipient opted out of this number",
            Reason.NOT_ON_WHATSAPP: "the recipient is not on WhatsApp",
        }.get(reason, f"instance {message.instance_id} is {instance_state.value}")
        super().__init__(
            reason,
            f"send blocked: {why} ({reason.value})",
            {
                "instance_id": message.instance_id,
                "message_id": message.id,
                "instance_state": instance_state.value,
            },
        )
        self.message = message


class ProviderFailed(GuardError):
    """The provider refused, timed out or answered without an id; the message is FAILED."""

    def __init__(self, reason: Reason, message: MessageRecord, detail: str) -> None:
        super().__init__(
            reason,
            f"provider did not accept message {message.id}: {reason.value}",
            {"instance_id": message.instance_id, "message_id": message.id, "detail": detail[:200]},
        )
        self.message = message


RETRY_METHOD = "wapiguard.v1.SendService/RetryMessage"


class OutcomeUnknown(ProviderFailed):
    """The attempt that held the key is over without a recorded answer (it died mid-send, or the
    provider call ended in an unexpected way). Only `RetryMessage` can change that, so it is a
    precondition failure that names it, not a "retry me" code."""

    def __init__(self, message: MessageRecord, detail: str) -> None:
        super().__init__(Reason.OUTCOME_UNKNOWN, message, detail)
        self.metadata["retry_with"] = RETRY_METHOD


class SendInProgress(GuardError):
    """Another attempt still holds this idempotency key: its outcome is not known yet."""

    def __init__(self, message: MessageRecord, retry_after: float) -> None:
        super().__init__(
            Reason.SEND_IN_PROGRESS,
            f"message {message.id} is still being sent by another attempt; retry in {retry_after:.1f}s",
            {"instance_id": message.instance_id, "message_id": message.id, "message_state": message.state.value},
        )
        self.message = message
        self.retry_after = retry_after


class IdempotencyConflict(GuardError):
    def __init__(self, message: MessageRecord) -> None:
        super().__init__(
            Reason.IDEMPOTENCY_KEY_REUSED,
            "idempotency_key was already used for a different message on this instance",
            {"instance_id": message.instance_id, "message_id": message.id},
        )


class NotRetryable(GuardError):
    def __init__(self, message: MessageRecord) -> None:
        super().__init__(
            Reason.MESSAGE_NOT_RETRYABLE,
            f"message {message.id} is {message.state.value}; only FAILED messages can be retried",
            {"message_id": message.id, "message_state": message.state.value},
        )


class NotHeld(GuardError):
    """CancelMessage on a message that is not HELD (already released, sent, failed or cancelled)."""

    def __init__(self, message: MessageRecord) -> None:
        super().__init__(
            Reason.MESSAGE_NOT_HELD,
            f"message {message.id} is {message.state.value}; only HELD messages can be cancelled",
            {"message_id": message.id, "message_state": message.state.value},
        )


class InvalidPayload(GuardError):
    """A webhook body that could not be used; it is stored anyway, with this reason."""

    def __init__(self, reason: str, event_id: str) -> None:
        super().__init__(
            Reason.INVALID_ARGUMENT,
            f"webhook payload not usable: {reason}",
            {"event_id": event_id, "event_reason": reason},
        )
        self.event_reason = reason
        self.event_id = event_id


class RecoveryRefused(GuardError):
    """A recovery action was not started (one already running, rate limit, no public URL)."""

    def __init__(self, reason: Reason, instance_id: str, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(
            reason,
            f"recovery on instance {_short(instance_id)} refused: {reason.value}" + (f" ({detail})" if detail else ""),
            {"instance_id": _short(instance_id)},
        )
        # Seconds until the action may be asked again (a rate limit: google.rpc.RetryInfo).
        self.retry_after = retry_after


class RecoveryFailed(GuardError):
    """W-API did not carry out a recovery action; nothing changed but the audit record."""

    def __init__(self, reason: Reason, instance_id: str, action: str, detail: str) -> None:
        super().__init__(
            reason,
            f"{action} on instance {_short(instance_id)} failed: {reason.value}",
            {"instance_id": _short(instance_id), "action": action, "detail": detail[:200]},
        )


class SendPaced(GuardError):
    """The instance's send policy refuses this send for now (statemachine/send_policy.py). Nothing
    is stored and no idempotency key is spent: the same request may come back after `retry_after`."""

    def __init__(self, reason: Reason, instance_id: str, retry_after: float, limit: int = 0) -> None:
        metadata = {"instance_id": _short(instance_id), "retry_after_seconds": f"{retry_after:.3f}"}
        if limit:
            metadata["limit"] = str(limit)
        super().__init__(
            reason, f"send paced by the instance's send policy ({reason.value}); retry in {retry_after:.1f}s", metadata
        )
        self.retry_after = retry_after
