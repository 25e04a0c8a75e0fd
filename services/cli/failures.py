"""A gRPC error as the operator reads it: decoded (google.rpc details), classified into a CLI text
and an exit code (STATUS_TABLE; the README's "Operator commands" documents it) and described in one
line, or as JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from services.cli.context import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_SERVER_ERROR,
    EXIT_TRY_LATER,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Context,
)
from services.i18n import duration, reason_label


@dataclass(frozen=True, slots=True)
class Failure:
    """A gRPC error as the operator needs it: code, machine reason, localized text, metadata, and
    the wait of a google.rpc.RetryInfo when the server sent one."""

    code: str
    reason: str
    message: str
    details: str
    metadata: dict[str, str]
    violations: dict[str, str]
    # google.rpc.RetryInfo: seconds until the server accepts the request again (a rate limit).
    retry_after: float | None = None

    @property
    def from_server(self) -> bool:
        """True when the server decided it (a google.rpc ErrorInfo came back), not the transport."""
        return bool(self.reason)


def decode_error(error: Any) -> Failure:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    reason, localized, metadata, violations = "", "", {}, {}
    retry_after: float | None = None
    try:
        status = rpc_status.from_call(error)
    except Exception:  # a malformed trailer must not hide the code
        status = None
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        text = error_details_pb2.LocalizedMessage()
        bad = error_details_pb2.BadRequest()
        retry = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(text.DESCRIPTOR):
            detail.Unpack(text)
            localized = text.message
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
            # AIP-193: `description` is for developers; `localized_message` is the caller's language.
            violations = {v.field: v.localized_message.message or v.description for v in bad.field_violations}
        elif detail.Is(retry.DESCRIPTOR):
            detail.Unpack(retry)
            retry_after = max(0.0, retry.retry_delay.ToNanoseconds() / 1e9)
    return Failure(error.code().name, reason, localized, error.details() or "", metadata, violations, retry_after)


SEND_FAILURE_CODES = frozenset({"FAILED_PRECONDITION", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ALREADY_EXISTS"})


# gRPC status → (CLI text, exit code); README "Operator commands" documents this table. UNAVAILABLE
# and DEADLINE_EXCEEDED mean "unreachable" only when no ErrorInfo came back (the transport's own
# status); with one, the server answered and says what is unavailable (its storage, W-API).
STATUS_TABLE: dict[str, tuple[str, int]] = {
    "INVALID_ARGUMENT": ("err_invalid", EXIT_USAGE),
    "OUT_OF_RANGE": ("err_invalid", EXIT_USAGE),
    "NOT_FOUND": ("err_not_found", EXIT_NOT_FOUND),
    "UNAUTHENTICATED": ("err_auth", EXIT_AUTH),
    "PERMISSION_DENIED": ("err_denied", EXIT_AUTH),
    "FAILED_PRECONDITION": ("err_refused", EXIT_FAILED),
    "ALREADY_EXISTS": ("err_conflict", EXIT_FAILED),
    "ABORTED": ("err_aborted", EXIT_TRY_LATER),
    "RESOURCE_EXHAUSTED": ("err_exhausted", EXIT_TRY_LATER),
    "UNAVAILABLE": ("err_unavailable", EXIT_UNAVAILABLE),
    "DEADLINE_EXCEEDED": ("err_timeout", EXIT_UNAVAILABLE),
    "UNIMPLEMENTED": ("err_unimplemented", EXIT_SERVER_ERROR),
    "INTERNAL": ("err_internal", EXIT_SERVER_ERROR),
    "UNKNOWN": ("err_internal", EXIT_SERVER_ERROR),
    "DATA_LOSS": ("err_internal", EXIT_SERVER_ERROR),
    "CANCELLED": ("err_cancelled", EXIT_SERVER_ERROR),
}


# The same two codes when the server answered them (ErrorInfo present).
SERVER_STATUS_TABLE: dict[str, tuple[str, int]] = {
    "UNAVAILABLE": ("err_server_unavailable", EXIT_TRY_LATER),
    "DEADLINE_EXCEEDED": ("err_server_timeout", EXIT_TRY_LATER),
}


def classify(failure: Failure) -> tuple[str, int]:
    """The CLI text name and exit code of a failure (see STATUS_TABLE)."""
    if failure.reason == "STORAGE_UNAVAILABLE":
        return "err_storage", EXIT_TRY_LATER
    if failure.from_server and failure.code in SERVER_STATUS_TABLE:
        return SERVER_STATUS_TABLE[failure.code]
    return STATUS_TABLE.get(failure.code, ("err_internal", EXIT_SERVER_ERROR))


def exit_code(failure: Failure, *, send: bool = False) -> int:
    if send and failure.from_server and failure.code in SEND_FAILURE_CODES and failure.reason != "STORAGE_UNAVAILABLE":
        return EXIT_FAILED
    return classify(failure)[1]


def error_json(failure: Failure, ctx: Context, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": failure.code,
        "reason": failure.reason or None,
        "message": failure.message or reason_label(failure.reason, ctx.lang) or failure.details,
        "details": failure.details,
        "metadata": failure.metadata,
    }
    if failure.violations:
        error["violations"] = failure.violations
        error["flags"] = {flag_of(ctx.args.command, k): v for k, v in failure.violations.items()}
    if failure.retry_after is not None:
        error["retry_after_seconds"] = failure.retry_after
    return {"ok": False, "error": error, **(extra or {})}


# Proto field of a google.rpc.BadRequest violation → what the CLI user typed, per command.
COMMAND_FLAGS: dict[str, dict[str, str]] = {
    "send": {"instance_id": "--instance", "to": "--to", "text.body": "--text", "idempotency_key": "--key"},
    "connect": {"phone_number": "--phone"},
    "instances": {
        "token": "--wapi-token",
        "name": "--name",
        "plan": "--plan",
        "provider": "--provider",
        "base_url": "--base-url",
        "client_token": "--client-token",
    },
    "messages": {"instance_id": "--instance", "page_size": "--limit"},
    "subscriptions": {
        "url": "--url",
        "description": "--description",
        "types": "--type",
        "instance_ids": "--instance",
        "id": "ID",
        "subscription_id": "ID",
        "page_size": "--limit",
        "states": "--state",
    },
    "retry": {"message_id": "MESSAGE"},
}


def flag_of(command: str, field: str) -> str:
    """The CLI flag (or positional argument) a proto field came from in `command`; the field itself
    when the user did not type it."""
    flags = COMMAND_FLAGS.get(command, {})
    if field in flags:
        return flags[field]
    return "INSTANCE" if field == "instance_id" else field


def describe(ctx: Context, failure: Failure) -> str:
    """One line (two with a RetryInfo wait) in the CLI's language: what kind of refusal or failure
    it is (see STATUS_TABLE), the server's LocalizedMessage and its ErrorInfo reason."""
    what = failure.metadata.get("instance_id") or failure.metadata.get("message_id") or failure.details
    name, _ = classify(failure)
    text = failure.message or reason_label(failure.reason, ctx.lang)
    if text == failure.reason:  # a reason with no text of its own: the server's status message says more
        text = failure.details or text
    if failure.code == "UNAUTHENTICATED":
        line = ctx.t("err_auth")
    elif failure.code == "PERMISSION_DENIED":
        line = ctx.t("err_denied", what=what)
        if ctx.args.command == "messages" and not getattr(ctx.args, "instance", ""):
            line += f"\n  {ctx.t('hint_scope')}"
    elif failure.code == "NOT_FOUND":
        if failure.reason == "INSTANCE_NOT_FOUND" and "instance_id" in failure.metadata:
            line = ctx.t("err_no_instance", id=failure.metadata["instance_id"])
        elif failure.reason == "MESSAGE_NOT_FOUND" and "message_id" in failure.metadata:
            line = ctx.t("err_no_message", id=failure.metadata["message_id"])
        else:
            line = ctx.t("err_not_found", what=failure.message or what)
    elif name == "err_invalid":
        if failure.violations:
            what = "; ".join(f"{flag_of(ctx.args.command, k)}: {v}" for k, v in failure.violations.items())
        else:
            what = text or failure.details
        line = ctx.t("err_invalid", what=what)
    elif name == "err_unavailable":
        line = ctx.t("err_unavailable", server=ctx.server, code=failure.code)
    elif name == "err_timeout":
        line = ctx.t("err_timeout", timeout=ctx.timeout, server=ctx.server)
    elif name in ("err_storage", "err_unimplemented", "err_cancelled"):
        line = ctx.t(name, server=ctx.server)
    else:
        line = f"{ctx.t(name)}: {text or failure.details or failure.code}"
    if failure.reason and name not in ("err_auth", "err_denied", "err_not_found"):
        line += f" ({failure.reason})"
    if failure.retry_after is not None:
        wait = duration(max(1, math.ceil(failure.retry_after)), ctx.lang)
        line += f"\n  {ctx.t('retry_after', wait=wait)}"
    return line
