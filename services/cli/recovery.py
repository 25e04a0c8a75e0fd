"""Operator commands of the recovery loop: `instances add|remove`, `connect`, `restart`,
`disconnect`, `webhooks configure|check`, `retry`, `reconcile`. Same plumbing as services/cli/operator.py
(gRPC, --json, exit codes, pt-BR by default)."""

from __future__ import annotations

import argparse
import base64
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from services.cli.operator import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Context,
    UsageError,
    instance_dict,
    message_dict,
    webhooks_line,
)
from services.i18n import RECOVERY_CLI_TEXTS, lang_of

RECOVERY_COMMANDS_NAMES = frozenset(
    {"connect", "restart", "disconnect", "clear-stall", "webhooks", "retry", "reconcile"}
)


def _t(ctx: Context, name: str, **values: Any) -> str:
    text = RECOVERY_CLI_TEXTS[lang_of(ctx.lang)][name]
    return text.format(**values) if values else text


def add_recovery_arguments(instances: argparse.ArgumentParser) -> None:
    """`instances [add|remove] [INSTANCE]` on the existing `instances` command."""
    instances.add_argument("action", nargs="?", choices=("list", "add", "remove"), default="list")
    instances.add_argument("instance_id", nargs="?", metavar="INSTANCE", default="")
    instances.add_argument("--name", default="", help="add: display name")
    instances.add_argument(
        "--wapi-token",
        default=None,
        help="add: the instance's W-API token [env WAPIGUARD_WAPI_TOKEN; prefer the env: argv is visible]",
    )
    instances.add_argument("--plan", choices=("PRO", "LITE"), default="PRO", help="add: W-API plan [default PRO]")
    instances.add_argument("--no-probe", action="store_true", help="add: do not probe the instance now")
    # Provider per instance (issue 24): W-API by default.
    instances.add_argument(
        "--provider", choices=("wapi", "zapi", "evolution"), default=None, help="add: provider API [default wapi]"
    )
    instances.add_argument("--base-url", default="", help="add: the provider's base URL (required for evolution)")
    instances.add_argument(
        "--client-token",
        default=None,
        help="add: Z-API account Client-Token [env WAPIGUARD_CLIENT_TOKEN; prefer the env: argv is visible]",
    )


def add_recovery_commands(sub: Any, kwargs: dict[str, Any]) -> None:
    connect = sub.add_parser(
        "connect",
        help="reconnect an instance: pairing code (--phone) or the QR code drawn here (operator)",
        description=(
            "With --phone: asks W-API for a pairing code to type on that phone (WhatsApp > Linked devices > "
            "Link with phone number). Without: draws the QR code in the terminal (and --qr-file saves the PNG)."
        ),
        **kwargs,
    )
    connect.add_argument("instance_id", metavar="INSTANCE")
    connect.add_argument("--phone", default="", help="phone to pair: +55 15 98112-1710, or national with its area code")
    connect.add_argument("--qr-file", default="", help="also save the QR code PNG to this file")
    for name, text in (("restart", "restart the instance at W-API"), ("disconnect", "log the instance out at W-API")):
        parser = sub.add_parser(name, help=f"{text} (operator)", description=text.capitalize() + ".", **kwargs)
        parser.add_argument("instance_id", metavar="INSTANCE")
    clear = sub.add_parser(
        "clear-stall",
        help="lift a DELIVERY_STALLED block after checking the session by hand (operator)",
        description=(
            "ClearStall: lifts DEGRADED/DELIVERY_STALLED (nothing goes to W-API), audited with who asked; "
            "anything else that blocks sends stays. Exit 1 when there was no stall to clear."
        ),
        **kwargs,
    )
    clear.add_argument("instance_id", metavar="INSTANCE")
    webhooks = sub.add_parser(
        "webhooks",
        help="point W-API's six webhooks at this service, or check them (operator)",
        description="configure: sets connected, disconnected, delivery, received, message-status and "
        "chat-presence to the bridge URL (needs serve --public-url); check: compares what W-API has.",
        **kwargs,
    )
    webhooks.add_argument("action", choices=("configure", "check"))
    webhooks.add_argument("instance_id", metavar="INSTANCE")
    retry = sub.add_parser(
        "retry",
        help="send a FAILED message again (operator)",
        description="RetryMessage: the stored message is sent again once the instance can send.",
        **kwargs,
    )
    retry.add_argument("message_id", metavar="MESSAGE")
    reconcile = sub.add_parser(
        "reconcile",
        help="replay W-API's webhook log: apply events missed while the bridge was down (operator)",
        description="Reads W-API's webhook log since the last stored event; already stored events are skipped.",
        **kwargs,
    )
    reconcile.add_argument("instance_id", metavar="INSTANCE", nargs="?", default="")


def _next(ctx: Context, text: str) -> None:
    if text:
        ctx.print(_t(ctx, "next", text=text))


def _state_line(ctx: Context, health: Any) -> str:
    data = instance_dict(health, ctx.lang)
    return ctx.paint(
        _t(ctx, "state", label=data["state_label"], state=data["state"], reason=data["reason"]), data["tone"]
    )


async def cmd_instances_change(ctx: Context) -> int:
    from services.api.wapiguard.v1 import common_pb2, instance_health_pb2

    args = ctx.args
    if not args.instance_id:
        raise UsageError(_t(ctx, "need_id", action=args.action))
    stub = ctx.health_stub()
    if args.action == "remove":
        answer = await ctx.call(stub.RemoveInstance, instance_health_pb2.InstanceRequest(instance_id=args.instance_id))
        if ctx.json:
            ctx.emit_json({"instance_id": answer.instance_id, "removed": answer.removed})
        else:
            ctx.print(_t(ctx, "removed", id=answer.instance_id))
        return EXIT_OK
    token = args.wapi_token if args.wapi_token is not None else os.environ.get("WAPIGUARD_WAPI_TOKEN", "")
    request = instance_health_pb2.RegisterInstanceRequest(
        instance_id=args.instance_id,
        name=args.name,
        token=token.strip(),
        plan=common_pb2.PLAN_LITE if args.plan == "LITE" else common_pb2.PLAN_PRO,
        skip_probe=args.no_probe,
        provider=common_pb2.Provider.Value(f"PROVIDER_{(args.provider or 'unspecified').upper()}"),
        base_url=args.base_url,
        client_token=(
            args.client_token if args.client_token is not None else os.environ.get("WAPIGUARD_CLIENT_TOKEN", "")
        ).strip(),
    )
    health = await ctx.call(stub.RegisterInstance, request)
    data = instance_dict(health, ctx.lang)
    if ctx.json:
        ctx.emit_json({"instance": data})
        return EXIT_OK
    ctx.print(
        ctx.paint(
            _t(ctx, "added", id=data["instance_id"], label=data["state_label"], state=data["state"]), data["tone"]
        )
    )
    ctx.print(_t(ctx, "webhooks_state", state=webhooks_line(ctx, data)))
    _next(ctx, health.next_step)
    return EXIT_OK


async def cmd_connect(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    args = ctx.args
    stub = ctx.health_stub()
    if args.phone:
        answer = await ctx.call(
            stub.RequestPairingCode,
            instance_health_pb2.RequestPairingCodeRequest(instance_id=args.instance_id, phone_number=args.phone),
        )
        if ctx.json:
            ctx.emit_json(
                {
                    "instance": instance_dict(answer.health, ctx.lang),
                    "pairing_code": answer.pairing_code or None,
                    "already_connected": answer.already_connected,
                    "next_step": answer.next_step,
                }
            )
            return EXIT_OK
        if answer.already_connected:
            ctx.print(_t(ctx, "already", phone=answer.health.phone_number or "—"))
        else:
            ctx.print(ctx.paint(_t(ctx, "pairing_code", code=answer.pairing_code), "green"))
        ctx.print(_state_line(ctx, answer.health))
        _next(ctx, answer.next_step)
        return EXIT_OK
    qr = await ctx.call(stub.GetQrCode, instance_health_pb2.InstanceRequest(instance_id=args.instance_id))
    if args.qr_file and qr.png:
        Path(args.qr_file).write_bytes(qr.png)  # noqa: ASYNC240 - a small local file, once
    if ctx.json:
        ctx.emit_json(
            {
                "instance": instance_dict(qr.health, ctx.lang),
                "already_connected": qr.already_connected,
                "qr_png_base64": base64.b64encode(qr.png).decode() if qr.png else None,
                "qr_text": qr.base64 or None,
                "next_step": qr.next_step,
            }
        )
        return EXIT_OK
    if qr.already_connected:
        ctx.print(_t(ctx, "already", phone=qr.health.phone_number or "—"))
    elif qr.png:
        from services.cli.terminal_qr import NotAQrImage, render

        ctx.print(_t(ctx, "qr_title"))
        try:
            ctx.print(render(qr.png))
        except NotAQrImage:
            ctx.print(qr.base64)
    if args.qr_file and qr.png:
        ctx.print(_t(ctx, "qr_saved", path=args.qr_file))
    ctx.print(_state_line(ctx, qr.health))
    _next(ctx, qr.next_step)
    return EXIT_OK


async def cmd_restart(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    stub = ctx.health_stub()
    request = instance_health_pb2.InstanceRequest(instance_id=ctx.args.instance_id)
    method = stub.RestartInstance if ctx.args.command == "restart" else stub.DisconnectInstance
    answer = await ctx.call(method, request)
    if ctx.json:
        ctx.emit_json(
            {
                "instance": instance_dict(answer.health, ctx.lang),
                "provider_message": answer.provider_message,
                "next_step": answer.next_step,
            }
        )
        return EXIT_OK
    template = "restarted" if ctx.args.command == "restart" else "disconnected"
    ctx.print(_t(ctx, template, message=answer.provider_message or "ok"))
    ctx.print(_state_line(ctx, answer.health))
    _next(ctx, answer.next_step)
    return EXIT_OK


async def cmd_clear_stall(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    request = instance_health_pb2.InstanceRequest(instance_id=ctx.args.instance_id)
    answer = await ctx.call(ctx.health_stub().ClearStall, request)
    if ctx.json:
        ctx.emit_json(
            {
                "instance": instance_dict(answer.health, ctx.lang),
                "cleared": answer.cleared,
                "next_step": answer.next_step,
            }
        )
    else:
        ctx.print(_t(ctx, "stall_cleared" if answer.cleared else "not_stalled"))
        ctx.print(_state_line(ctx, answer.health))
        _next(ctx, answer.next_step)
    return EXIT_OK if answer.cleared else EXIT_FAILED


async def cmd_webhooks(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    stub = ctx.health_stub()
    request = instance_health_pb2.InstanceRequest(instance_id=ctx.args.instance_id)
    method = stub.ConfigureWebhooks if ctx.args.action == "configure" else stub.CheckWebhooks
    answer = await ctx.call(method, request)
    kinds = [{"kind": k.kind, "ok": k.ok, "detail": k.detail} for k in answer.kinds]
    if ctx.json:
        ctx.emit_json(
            {"configured": answer.configured, "url": answer.url, "kinds": kinds, "next_step": answer.next_step}
        )
        return EXIT_OK if answer.configured else EXIT_FAILED
    ctx.print(
        ctx.paint(
            _t(ctx, "hooks_ok" if answer.configured else "hooks_bad", url=answer.url),
            "green" if answer.configured else "red",
        )
    )
    for kind in kinds:
        mark = ctx.paint("✓", "green") if kind["ok"] else ctx.paint("✗", "red")
        ctx.print(f"  {mark} {kind['kind']}" + (f"  {kind['detail']}" if kind["detail"] else ""))
    if not answer.configured:
        _next(ctx, answer.next_step)
    return EXIT_OK if answer.configured else EXIT_FAILED


async def cmd_retry(ctx: Context) -> int:
    from services.api.wapiguard.v1 import send_pb2

    msg = await ctx.call(ctx.send_stub().RetryMessage, send_pb2.RetryMessageRequest(message_id=ctx.args.message_id))
    data = message_dict(msg, ctx.lang)
    if ctx.json:
        ctx.emit_json({"ok": data["state"] != "FAILED", "message": data})
    else:
        ctx.print(
            ctx.paint(_t(ctx, "retry_ok", id=data["id"], label=data["state_label"], state=data["state"]), "green")
        )
    return EXIT_FAILED if data["state"] == "FAILED" else EXIT_OK


async def cmd_reconcile(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    answer = await ctx.call(
        ctx.health_stub().ReconcileEvents,
        instance_health_pb2.ReconcileEventsRequest(instance_id=ctx.args.instance_id),
    )
    results = [
        {
            "instance_id": r.instance_id,
            "fetched": r.fetched,
            "applied": r.applied,
            "duplicates": r.duplicates,
            "failed": r.failed,
            "pages": r.pages,
            "error": r.error or None,
        }
        for r in answer.instances
    ]
    stuck = [message_dict(m, ctx.lang) for m in answer.stuck]
    if ctx.json:
        ctx.emit_json({"instances": results, "stuck": stuck})
    else:
        for r in results:
            if r["error"]:
                ctx.print(ctx.paint(_t(ctx, "reconcile_error", id=r["instance_id"], error=r["error"]), "yellow"))
            else:
                ctx.print(
                    _t(
                        ctx,
                        "reconciled",
                        id=r["instance_id"],
                        **{k: r[k] for k in ("fetched", "applied", "duplicates")},
                    )
                )
        if stuck:
            ctx.print(_t(ctx, "stuck_title"))
            for m in stuck:
                ctx.print(
                    f"  {m['id']}  {m['instance_id']}  {m['to_masked']}  {m['state_label']}  "
                    f"{m['provider_message_id'] or '—'}"
                )
        else:
            ctx.print(_t(ctx, "no_stuck"))
    return EXIT_UNAVAILABLE if any(r["error"] for r in results) else EXIT_OK


RECOVERY_COMMANDS: dict[str, Callable[[Context], Awaitable[int]]] = {
    "connect": cmd_connect,
    "restart": cmd_restart,
    "disconnect": cmd_restart,
    "clear-stall": cmd_clear_stall,
    "webhooks": cmd_webhooks,
    "retry": cmd_retry,
    "reconcile": cmd_reconcile,
}
