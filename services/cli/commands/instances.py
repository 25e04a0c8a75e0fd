"""`wapi-guard instances [list|add|remove]`: the instances with their real health (`--refresh`
probes each first), or register / forget one."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from services.cli.context import (
    DEFAULT_CONCURRENCY,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Context,
    Subparsers,
    UsageError,
    say,
)
from services.cli.failures import decode_error
from services.cli.output import Progress, budgets_cell, held_cell, instance_dict, parse_time, table, webhooks_line
from services.cli.texts import next_step
from services.i18n import RECOVERY_CLI_TEXTS, ago


def _t(ctx: Context, name: str, /, **values: Any) -> str:
    return say(RECOVERY_CLI_TEXTS, ctx.lang, name, **values)


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
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
    # Provider per instance (docs/providers.md): W-API by default.
    instances.add_argument(
        "--provider", choices=("wapi", "zapi", "evolution"), default=None, help="add: provider API [default wapi]"
    )
    instances.add_argument("--base-url", default="", help="add: the provider's base URL (required for evolution)")
    instances.add_argument(
        "--client-token",
        default=None,
        help="add: Z-API account Client-Token [env WAPIGUARD_CLIENT_TOKEN; prefer the env: argv is visible]",
    )
    instances.set_defaults(run=cmd_instances)


async def cmd_instances(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    if ctx.args.action in ("add", "remove"):
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
    headers = [ctx.t(k) for k in ("id", "name", "state", "phone", "stuck", "held_col", "checked", "budgets", "reason")]
    cells = [
        [
            r["instance_id"],
            r["name"],
            r["state_label"],
            r["phone_number"] or "—",
            str(r["stuck_messages"]),
            held_cell(r),
            ago(parse_time(r["checked_at"]), ctx.now, ctx.lang),
            budgets_cell(r),
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
    next_step(ctx, health.next_step)
    return EXIT_OK
