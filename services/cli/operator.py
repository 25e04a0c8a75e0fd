"""Operator commands (`instances`, `messages`, `send`, `status`) talking to a running server over gRPC,
in the operator vocabulary of services/i18n.py that the status page shares, so the screen and the
terminal say the same thing in the same words (pt-BR by default).

This module stays light on imports (no database, no aiohttp): it is what `wapi-guard <command>` loads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from services.i18n import (
    CLI_TEXTS,
    DEFAULT_LANG,
    LANGS,
    MESSAGE_TONES,
    ago,
    duration,
    iso,
    lang_of,
    mask_recipient,
    message_label,
    normalize_lang,
    reason_label,
    state_view,
)

T = TypeVar("T")

# --- CLI texts ---------------------------------------------------------------------------------


def _t(lang: str, name: str, **values: Any) -> str:
    text = CLI_TEXTS[lang_of(lang)][name]
    return text.format(**values) if values else text


# --- command line ------------------------------------------------------------------------------

OPERATOR_COMMANDS: frozenset[str] = frozenset(
    {
        "instances",
        "messages",
        "send",
        "status",
        "connect",
        "restart",
        "disconnect",
        "clear-stall",
        "webhooks",
        "subscriptions",
        "retry",
        "reconcile",
    }
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_TRY_LATER = 6
EXIT_SERVER_ERROR = 7

EXIT_CODES_HELP = """\
exit codes:
  0  ok
  1  refused by the server: send blocked or failed (stored as FAILED), an action the instance's
     state does not allow (FAILED_PRECONDITION, ALREADY_EXISTS), or an action that changed nothing
  2  usage error (bad arguments, or rejected by the server as invalid)
  3  server unreachable, or no answer within --timeout (nothing was answered)
  4  instance or message not found
  5  unauthenticated or permission denied (check --token / WAPIGUARD_TOKEN)
  6  try again later: rate limit, action in progress, the server's storage or W-API unavailable
  7  server error or a server that does not know this command

environment: WAPIGUARD_SERVER, WAPIGUARD_TOKEN (prefer it to --token: argv is visible to other
users), WAPIGUARD_LANG. --json prints machine-readable output on stdout, errors included."""

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 20.0
DEFAULT_CONCURRENCY = 8
MAX_PAGE = 500


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--server", default=None, help=f"gRPC address host:port [env WAPIGUARD_SERVER; default {DEFAULT_SERVER}]"
    )
    group.add_argument("--token", default=None, help="API token, sent as 'authorization: Bearer' [env WAPIGUARD_TOKEN]")
    group.add_argument(
        "--lang", default=None, choices=LANGS, help="language of labels and reasons [env WAPIGUARD_LANG; default pt-BR]"
    )
    group.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    group.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per call [default {DEFAULT_TIMEOUT:g}]"
    )
    group.add_argument("--tls", action="store_true", help="connect with TLS (system CA roots unless --ca-file)")
    group.add_argument("--ca-file", default=None, help="PEM CA bundle that signed the server certificate (TLS)")
    group.add_argument("--cert-file", default=None, help="PEM client certificate chain (mTLS)")
    group.add_argument("--key-file", default=None, help="PEM client private key (mTLS)")
    return common


def add_operator_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registers the operator subcommands on the `wapi-guard` parser."""
    common = _common()
    kwargs: dict[str, Any] = {
        "parents": [common],
        "epilog": EXIT_CODES_HELP,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }
    instances = sub.add_parser(
        "instances",
        help="list, add or remove instances and see their real health (operator)",
        description=(
            "Instances with their state as an operator should read it (Online, Sessão incompleta, …). "
            "`instances add INSTANCE --name N` registers one (token from WAPIGUARD_WAPI_TOKEN or --wapi-token); "
            "`instances remove INSTANCE` forgets it."
        ),
        **kwargs,
    )
    instances.add_argument(
        "--refresh", action="store_true", help="probe every instance now (progress on stderr) before listing"
    )
    instances.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"probes in flight with --refresh [default {DEFAULT_CONCURRENCY}]",
    )

    messages = sub.add_parser(
        "messages",
        help="list messages: stuck, failed, per instance (operator)",
        description="Newest first. Recipients are masked in the table (full numbers only with --json).",
        **kwargs,
    )
    messages.add_argument("--stuck", action="store_true", help="only messages stuck in SENT (no delivery receipt)")
    messages.add_argument("--failed", action="store_true", help="only FAILED messages (with --stuck: both)")
    messages.add_argument("--instance", default="", help="only this instance")
    messages.add_argument("--limit", type=int, default=20, help="at most N messages [default 20]")

    send = sub.add_parser(
        "send",
        help="send a text message and print the real outcome (operator)",
        description=(
            "Sends one text. Prints the outcome (state, provider id) or why it was blocked. "
            "Without --key a key is generated and printed: repeating with it never sends twice."
        ),
        **kwargs,
    )
    send.add_argument("--instance", required=True, help="instance id")
    send.add_argument(
        "--to",
        required=True,
        help="phone, international (+55 15 98112-1710) or national in the server's region (15 98112-1710), "
        "or a chat id",
    )
    send.add_argument("--text", required=True, help="message text")
    send.add_argument("--key", default="", help="idempotency key (same key → same message, no second send)")

    status = sub.add_parser(
        "status", help="one instance's health in detail (operator)", description="One instance in detail.", **kwargs
    )
    status.add_argument("instance_id", metavar="INSTANCE", help="instance id")
    status.add_argument("--refresh", action="store_true", help="probe the instance now")

    from services.cli.webhooks import add_webhook_commands

    add_webhook_commands(sub, kwargs)
    from services.cli.recovery import add_recovery_arguments, add_recovery_commands

    add_recovery_arguments(instances)
    add_recovery_commands(sub, kwargs)


# --- gRPC plumbing -----------------------------------------------------------------------------


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


class UsageError(Exception):
    pass


class Context:
    """Connection, output and language of one command run."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.server: str = args.server or os.environ.get("WAPIGUARD_SERVER") or DEFAULT_SERVER
        self.lang: str = args.lang or normalize_lang(os.environ.get("WAPIGUARD_LANG")) or DEFAULT_LANG
        self.json: bool = bool(args.json)
        self.timeout: float = args.timeout
        if not self.timeout or self.timeout <= 0:
            raise UsageError("--timeout must be > 0")
        token = args.token if args.token is not None else os.environ.get("WAPIGUARD_TOKEN", "")
        self.metadata: tuple[tuple[str, str], ...] = (("accept-language", self.lang),)
        if token.strip():
            self.metadata += (("authorization", f"Bearer {token.strip()}"),)
        self.color = not self.json and out.isatty() and not os.environ.get("NO_COLOR")
        self.now = datetime.now(UTC)
        self._channel: Any = None

    def t(self, name: str, **values: Any) -> str:
        return _t(self.lang, name, **values)

    def credentials(self) -> Any:
        import grpc

        args = self.args
        if not (args.tls or args.ca_file or args.cert_file or args.key_file):
            return None
        if bool(args.cert_file) != bool(args.key_file):
            raise UsageError("--cert-file and --key-file go together")

        def read(path: str | None) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as error:
                raise UsageError(self.t("err_tls", path=path, error=error.strerror or error)) from None

        return grpc.ssl_channel_credentials(read(args.ca_file), read(args.key_file), read(args.cert_file))

    def channel(self) -> Any:
        import grpc

        if self._channel is None:
            credentials = self.credentials()
            if credentials is None:
                self._channel = grpc.aio.insecure_channel(self.server)
            else:
                self._channel = grpc.aio.secure_channel(self.server, credentials)
        return self._channel

    async def call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        return await method(request, metadata=self.metadata, timeout=self.timeout)

    def health_stub(self) -> Any:
        from services.api.wapiguard.v1 import instance_health_pb2_grpc

        return instance_health_pb2_grpc.InstanceHealthServiceStub(self.channel())

    def send_stub(self) -> Any:
        from services.api.wapiguard.v1 import send_pb2_grpc

        return send_pb2_grpc.SendServiceStub(self.channel())

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    # output

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(f"wapi-guard: {text}", file=self.err)

    def emit_json(self, value: Any) -> None:
        json.dump(value, self.out, ensure_ascii=False, indent=2)
        self.out.write("\n")

    def paint(self, text: str, tone: str) -> str:
        """Colour through rich's styles on a terminal; the text unchanged otherwise."""
        if not self.color:
            return text
        from rich.console import Console
        from rich.text import Text

        console = Console(force_terminal=True, color_system="standard", width=100_000)
        with console.capture() as captured:
            console.print(Text(text, style=_RICH_TONES.get(tone, "")), end="", soft_wrap=True)
        return captured.get()


def _dt(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    value: datetime = getattr(message, name).ToDatetime(tzinfo=UTC)
    return value


def _name(enum_value: int, enum_type: Any, prefix: str) -> str:
    try:
        return str(enum_type.Name(enum_value)).removeprefix(prefix)
    except ValueError:
        return "UNSPECIFIED"


def webhooks_line(ctx: Context, data: dict[str, Any]) -> str:
    """W-API's webhook state and whether deliveries can be confirmed (receipts reach us)."""
    state = data["webhooks_state"]
    if data["delivery_confirmable"]:
        return ctx.t("webhooks_ok", state=state)
    return ctx.paint(ctx.t("webhooks_unconfirmed", state=state), "orange")


def instance_dict(h: Any, lang: str) -> dict[str, Any]:
    from services.api.wapiguard.v1 import common_pb2

    state = _name(h.state, common_pb2.InstanceState, "INSTANCE_STATE_")
    view = state_view(state, h.reason, lang)
    return {
        "instance_id": h.instance_id,
        "name": h.name,
        "state": state,
        "state_label": view.label,
        "tone": view.tone,
        "reason": h.reason,
        "reason_message": h.reason_message or reason_label(h.reason, lang),
        "can_send": h.can_send,
        "phone_number": h.phone_number or None,
        "plan": _name(h.plan, common_pb2.Plan, "PLAN_"),
        "provider": _name(h.provider, common_pb2.Provider, "PROVIDER_") if h.provider else "WAPI",
        "stuck_messages": h.stuck_messages,
        "checked_at": iso(_dt(h, "checked_at")),
        "last_event_at": iso(_dt(h, "last_event_at")),
        "state_changed_at": iso(_dt(h, "state_changed_at")),
        "delivery_confirmable": h.delivery_confirmable,
        "webhooks_state": h.webhooks_state or "UNCONFIGURED",
        "webhooks_evidence": h.webhooks_evidence or None,
        "last_receipt_at": iso(_dt(h, "last_receipt_at")),
        "next_step": h.next_step,
    }


def message_dict(m: Any, lang: str) -> dict[str, Any]:
    from services.api.wapiguard.v1 import common_pb2

    state = _name(m.state, common_pb2.MessageState, "MESSAGE_STATE_")
    reason = m.failure_reason or ("STUCK" if m.stuck else "")
    return {
        "id": m.id,
        "instance_id": m.instance_id,
        "to": m.to,
        "to_masked": mask_recipient(m.to),
        "kind": _name(m.kind, common_pb2.MessageKind, "MESSAGE_KIND_"),
        "state": state,
        "state_label": message_label(state, m.stuck, lang),
        "stuck": m.stuck,
        "failure_reason": m.failure_reason,
        "reason_message": reason_label(reason, lang),
        "attempts": m.attempts,
        "provider_message_id": m.provider_message_id or None,
        "idempotency_key": m.idempotency_key or None,
        "created_at": iso(_dt(m, "created_at")),
        "sent_at": iso(_dt(m, "sent_at")),
        "updated_at": iso(_dt(m, "updated_at")),
    }


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], tones: Sequence[str | None], out: TextIO, *, color: bool
) -> None:
    """A rich table: coloured and framed on a terminal, plain aligned columns otherwise (one row
    per line, never wrapped, so `grep` and `cut` keep working)."""
    from rich.console import Console
    from rich.table import Table

    tty = color
    console = Console(
        file=out,
        force_terminal=tty,
        no_color=not tty,
        color_system="standard" if tty else None,
        width=None if tty else 100_000,
        highlight=False,
        soft_wrap=not tty,
    )
    grid = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), show_header=True, header_style="bold" if tty else "")
    for header in headers:
        grid.add_column(header, overflow="fold" if tty else "ignore", no_wrap=not tty)
    for row, tone in zip(rows, tones, strict=False):
        grid.add_row(*row, style=_RICH_TONES.get(tone or "", "") if tty else "")
    console.print(grid)


_RICH_TONES = {
    "green": "green",
    "orange": "dark_orange",
    "yellow": "yellow",
    "red": "red",
    "grey": "bright_black",
    "slate": "cyan",
}


class Progress:
    """A rich progress bar on stderr when it is a terminal; one final plain line otherwise."""

    def __init__(self, total: int, label: str, stream: TextIO) -> None:
        self.total, self.label, self.stream, self.done = total, label, stream, 0
        self.tty = stream.isatty()
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(file=stream),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self.stream.write(f"{self.label}: {self.done}/{self.total}\n")
            self.stream.flush()


# --- commands ----------------------------------------------------------------------------------


async def cmd_instances(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    if getattr(ctx.args, "action", "list") in ("add", "remove"):
        from services.cli.recovery import cmd_instances_change

        return await cmd_instances_change(ctx)

    stub = ctx.health_stub()
    listed = await ctx.call(stub.ListInstances, instance_health_pb2.ListInstancesRequest())
    items = list(listed.instances)
    code = EXIT_OK
    failures: dict[str, str] = {}
    if ctx.args.refresh and items:
        items, failures = await _refresh(ctx, stub, items)
        ctx.now = datetime.now(UTC)
        if any(c != "NOT_FOUND" for c in failures.values()):
            code = EXIT_UNAVAILABLE
    rows = [instance_dict(h, ctx.lang) for h in items]
    if ctx.json:
        out: dict[str, Any] = {"instances": rows}
        if failures:
            out["probe_failures"] = failures
        ctx.emit_json(out)
        return code
    if not rows:
        ctx.print(ctx.t("no_instances"))
        return code
    headers = [ctx.t(k) for k in ("id", "name", "state", "phone", "stuck", "checked", "reason")]
    cells = [
        [
            r["instance_id"],
            r["name"],
            r["state_label"],
            r["phone_number"] or "—",
            str(r["stuck_messages"]),
            ago(_parse(r["checked_at"]), ctx.now, ctx.lang),
            r["reason_message"],
        ]
        for r in rows
    ]
    table(headers, cells, [r["tone"] for r in rows], ctx.out, color=ctx.color)
    return code


async def _refresh(ctx: Context, stub: Any, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
    """GetInstanceHealth(refresh=True) for each instance, at most --concurrency at once."""
    import grpc

    from services.api.wapiguard.v1 import instance_health_pb2

    concurrency = max(1, int(ctx.args.concurrency))
    gate = asyncio.Semaphore(concurrency)
    progress = Progress(len(items), ctx.t("probing"), ctx.err)
    failures: dict[str, str] = {}

    async def one(h: Any) -> Any:
        async with gate:
            try:
                request = instance_health_pb2.GetInstanceHealthRequest(instance_id=h.instance_id, refresh=True)
                return await ctx.call(stub.GetInstanceHealth, request)
            except grpc.aio.AioRpcError as error:
                failure = decode_error(error)
                if failure.code == "UNAUTHENTICATED":
                    raise
                failures[h.instance_id] = failure.code
                return None if failure.code == "NOT_FOUND" else h
            finally:
                progress.advance()

    try:
        results = await asyncio.gather(*(one(h) for h in items))
    finally:
        progress.close()
    for instance_id, code in sorted(failures.items()):
        ctx.warn(ctx.t("probe_failed", id=instance_id, code=code))
    return [r for r in results if r is not None], failures


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


async def cmd_messages(ctx: Context) -> int:
    from services.api.wapiguard.v1 import common_pb2, send_pb2

    args = ctx.args
    if args.limit < 1:
        raise UsageError("--limit must be ≥ 1")
    stub = ctx.send_stub()
    queries: list[dict[str, Any]] = []
    if args.stuck:
        queries.append({"stuck_only": True})
    if args.failed:
        queries.append({"states": [common_pb2.MESSAGE_STATE_FAILED]})
    if not queries:
        queries.append({})
    found: dict[str, Any] = {}
    for query in queries:
        token = ""
        taken = 0
        while taken < args.limit:
            size = min(MAX_PAGE, args.limit - taken)
            request = send_pb2.ListMessagesRequest(instance_id=args.instance, page_size=size, page_token=token, **query)
            page = await ctx.call(stub.ListMessages, request)
            for m in page.messages:
                found[m.id] = m
            taken += len(page.messages)
            token = page.next_page_token
            if not token:
                break
    ordered = sorted(found.values(), key=lambda m: (m.created_at.seconds, m.created_at.nanos, m.id), reverse=True)
    rows = [message_dict(m, ctx.lang) for m in ordered[: args.limit]]
    if ctx.json:
        ctx.emit_json({"messages": rows})
        return EXIT_OK
    if not rows:
        ctx.print(ctx.t("no_messages"))
        return EXIT_OK
    headers = [ctx.t(k) for k in ("id", "instance", "to", "state", "attempts", "age", "reason")]
    cells = [
        [
            r["id"],
            r["instance_id"],
            r["to_masked"],
            r["state_label"],
            str(r["attempts"]),
            duration((ctx.now - (_parse(r["created_at"]) or ctx.now)).total_seconds(), ctx.lang),
            r["reason_message"],
        ]
        for r in rows
    ]
    tones = [MESSAGE_TONES.get("STUCK" if r["stuck"] else r["state"], "slate") for r in rows]
    table(headers, cells, tones, ctx.out, color=ctx.color)
    return EXIT_OK


async def cmd_send(ctx: Context) -> int:
    import grpc

    from services.api.wapiguard.v1 import send_pb2

    args = ctx.args
    key = args.key or f"cli-{uuid.uuid4().hex}"
    request = send_pb2.SendMessageRequest(
        instance_id=args.instance, to=args.to, idempotency_key=key, text=send_pb2.TextContent(body=args.text)
    )
    try:
        msg = await ctx.call(ctx.send_stub().SendMessage, request)
    except grpc.aio.AioRpcError as error:
        failure = decode_error(error)
        code = exit_code(failure, send=True)
        if code == EXIT_UNAVAILABLE or failure.reason == "STORAGE_UNAVAILABLE":
            # No answer, a dropped connection or a store that failed after the provider call: the
            # message may have gone out. Say so, never guess; the key makes a retry safe.
            if ctx.json:
                ctx.emit_json(_error_json(failure, ctx, extra={"outcome": "UNKNOWN", "idempotency_key": key}))
            else:
                ctx.warn(_describe(ctx, failure))
                ctx.warn(ctx.t("unknown_outcome", key=key))
            return code
        if code != EXIT_FAILED:
            raise
        return _print_refusal(ctx, failure, key)
    data = message_dict(msg, ctx.lang)
    if ctx.json:
        ctx.emit_json({"ok": data["state"] != "FAILED", "message": data})
    elif data["state"] == "FAILED":
        ctx.print(ctx.t("failed", reason=data["failure_reason"]))
        ctx.print(f"  {data['reason_message']}")
        ctx.print(f"  {ctx.t('message_id')}: {data['id']}")
    else:
        template = "sent_ok" if data["state"] in ("SENT", "PENDING") else "delivered_ok"
        ctx.print(ctx.paint(ctx.t(template, label=data["state_label"], state=data["state"]), "green"))
        ctx.print(f"  {ctx.t('message_id')}: {data['id']}")
        ctx.print(f"  {ctx.t('provider_id')}: {data['provider_message_id'] or '—'}")
        ctx.print(f"  {ctx.t('key')}: {key}")
        if data["state"] in ("SENT", "PENDING"):
            ctx.print(f"  {ctx.t('sent_note', instance=data['instance_id'])}")
    return EXIT_FAILED if data["state"] == "FAILED" else EXIT_OK


def _print_refusal(ctx: Context, failure: Failure, key: str) -> int:
    text = failure.message or reason_label(failure.reason, ctx.lang)
    message_id = failure.metadata.get("message_id", "")
    if ctx.json:
        ctx.emit_json(_error_json(failure, ctx, extra={"idempotency_key": key, "message_id": message_id or None}))
        return EXIT_FAILED
    template = "blocked" if failure.code == "FAILED_PRECONDITION" else "failed"
    ctx.print(ctx.paint(ctx.t(template, reason=failure.reason), "red"))
    ctx.print(f"  {text}")
    if message_id:
        ctx.print(f"  {ctx.t('stored_failed', id=message_id)}")
    if failure.code != "ALREADY_EXISTS" and message_id:
        # The same key would replay this stored refusal; only RetryMessage sends it again.
        ctx.print(f"  {ctx.t('retry_hint', id=message_id)}")
    return EXIT_FAILED


async def cmd_status(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    request = instance_health_pb2.GetInstanceHealthRequest(instance_id=ctx.args.instance_id, refresh=ctx.args.refresh)
    h = await ctx.call(ctx.health_stub().GetInstanceHealth, request)
    data = instance_dict(h, ctx.lang)
    if ctx.json:
        ctx.emit_json({"instance": data})
        return EXIT_OK

    def when(field: str) -> str:
        at = _parse(data[field])
        return f"{ago(at, ctx.now, ctx.lang)} ({data[field]})" if at else "—"

    fields = [
        ("f_instance", data["instance_id"]),
        ("f_name", data["name"]),
        ("f_state", ctx.paint(f"{data['state_label']} ({data['state']})", data["tone"])),
        ("f_can_send", ctx.t("yes") if data["can_send"] else ctx.t("no")),
        ("f_reason", f"{data['reason_message']} ({data['reason']})" if data["reason"] else "—"),
        ("f_phone", data["phone_number"] or "—"),
        ("f_plan", data["plan"]),
        ("f_stuck", str(data["stuck_messages"])),
        ("f_changed", when("state_changed_at")),
        ("f_checked", when("checked_at")),
        ("f_last_event", when("last_event_at")),
        ("f_webhooks", webhooks_line(ctx, data)),
    ]
    if data["next_step"]:
        fields.append(("f_next", data["next_step"]))
    width = max(len(ctx.t(k)) for k, _ in fields)
    for key, value in fields:
        ctx.print(f"{ctx.t(key).ljust(width)}  {value}")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Context], Awaitable[int]]] = {
    "instances": cmd_instances,
    "messages": cmd_messages,
    "send": cmd_send,
    "status": cmd_status,
}


async def _cmd_subscriptions(ctx: Context) -> int:
    from services.cli.webhooks import cmd_webhooks

    return await cmd_webhooks(ctx)


COMMANDS["subscriptions"] = _cmd_subscriptions


def _error_json(failure: Failure, ctx: Context, extra: dict[str, Any] | None = None) -> dict[str, Any]:
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
_COMMAND_FLAGS: dict[str, dict[str, str]] = {
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
    flags = _COMMAND_FLAGS.get(command, {})
    if field in flags:
        return flags[field]
    return "INSTANCE" if field == "instance_id" else field


def _describe(ctx: Context, failure: Failure) -> str:
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


async def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import grpc

    from services.cli.recovery import RECOVERY_COMMANDS

    ctx = Context(args, out, err)
    try:
        return await {**COMMANDS, **RECOVERY_COMMANDS}[args.command](ctx)
    except grpc.aio.AioRpcError as error:
        failure = decode_error(error)
        if ctx.json:
            ctx.emit_json(_error_json(failure, ctx))
        else:
            ctx.warn(_describe(ctx, failure))
        return exit_code(failure)
    finally:
        await ctx.close()


def run_operator(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args, sys.stdout, sys.stderr))
    except UsageError as error:
        print(f"wapi-guard {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `wapi-guard instances | head`: the reader left; the command itself did its job.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
