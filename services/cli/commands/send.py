"""`wapi-guard send`: one text, and its real outcome (state, provider id) or why it was blocked."""

from __future__ import annotations

import uuid
from typing import Any

from services.cli.context import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, Context, Subparsers
from services.cli.failures import Failure, decode_error, describe, error_json, exit_code
from services.cli.output import message_dict
from services.i18n import reason_label


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
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
    send.set_defaults(run=cmd_send)


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
                ctx.emit_json(error_json(failure, ctx, extra={"outcome": "UNKNOWN", "idempotency_key": key}))
            else:
                ctx.warn(describe(ctx, failure))
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
        ctx.emit_json(error_json(failure, ctx, extra={"idempotency_key": key, "message_id": message_id or None}))
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
