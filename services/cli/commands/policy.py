"""`wapi-guard policy show|set|history INSTANCE`: an instance's send policy (docs/send-policy.md),
its budgets used and left, and the audit of its changes. `set` replaces the whole policy with the
flags given (a flag left out is 0: no limit), like SetSendPolicy."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

from services.cli.context import EXIT_OK, Context, Subparsers, say
from services.cli.output import budgets_dict
from services.i18n import PROTECTION_CLI_TEXTS

INTS = ("max_per_minute", "new_recipients_per_hour", "new_recipients_per_day", "warmup_start_per_day", "warmup_days")


def _t(ctx: Context, name: str, /, **values: Any) -> str:
    return say(PROTECTION_CLI_TEXTS, ctx.lang, name, **values)


def state_dict(state: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    policy = MessageToDict(state.policy, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return {
        "instance_id": state.instance_id,
        "active": state.active,
        "policy": policy,
        "warmup_anchor": state.warmup_anchor.ToDatetime(UTC).isoformat() if state.HasField("warmup_anchor") else "",
        "warmup_phone": state.warmup_phone,
        "optout_list": state.optout_list,
        "budgets": budgets_dict(state.budgets),
        "updated_by": state.updated_by,
    }


def _limit(ctx: Context, value: int) -> str:
    return str(value) if value else _t(ctx, "unlimited")


def _print_state(ctx: Context, data: dict[str, Any]) -> None:
    instance, b, p = data["instance_id"], data["budgets"], data["policy"]
    if not data["active"]:
        ctx.print(_t(ctx, "no_policy", instance=instance))
    else:
        ctx.print(_t(ctx, "policy", instance=instance))
        if p["min_interval_seconds"] or p["jitter_seconds"]:
            ctx.print("  " + _t(ctx, "interval", seconds=p["min_interval_seconds"], jitter=p["jitter_seconds"]))
        for key, used, limit, left in (
            ("per_minute", "sends_this_minute", "max_per_minute", "sends_left_this_minute"),
            ("per_hour", "new_recipients_this_hour", "new_recipients_per_hour", "new_recipients_left_this_hour"),
            ("per_day", "new_recipients_today", "new_recipients_today_budget", "new_recipients_left_today"),
        ):
            shown = _limit(ctx, b[limit])
            ctx.print("  " + _t(ctx, key, used=b[used], limit=shown, left=b[left] if b[limit] else shown))
        if b["warmup_days"]:
            anchor, phone = data["warmup_anchor"][:19] or "-", data["warmup_phone"] or "-"
            ctx.print("  " + _t(ctx, "warmup", day=b["warmup_day"], days=b["warmup_days"], anchor=anchor, phone=phone))
        if p["quiet_start"]:
            ctx.print("  " + _t(ctx, "quiet", start=p["quiet_start"], end=p["quiet_end"], zone=p["time_zone"]))
    ctx.print("  " + _t(ctx, "optout_list", name=data["optout_list"] or _t(ctx, "own_list")))


async def cmd_policy(ctx: Context) -> int:
    from services.api.wapiguard.v1 import send_policy_pb2, send_policy_pb2_grpc

    args = ctx.args
    stub = send_policy_pb2_grpc.SendPolicyServiceStub(ctx.channel())
    if args.action == "history":
        page = await ctx.call(
            stub.ListSendPolicyChanges,
            send_policy_pb2.ListSendPolicyChangesRequest(instance_id=args.instance, page_size=args.limit),
        )
        rows = [
            {
                "at": c.at.ToDatetime(UTC).isoformat(timespec="seconds"),
                "change": c.change,
                "by": c.by,
                "before": json.loads(c.before_json) if c.before_json else None,
                "after": json.loads(c.after_json),
            }
            for c in page.changes
        ]
        if ctx.json:
            ctx.emit_json(rows)
        elif not rows:
            ctx.print(_t(ctx, "history_none", instance=args.instance))
        for row in [] if ctx.json else rows:
            ctx.print(_t(ctx, "history_row", at=row["at"], change=row["change"], by=row["by"] or "-"))
        return EXIT_OK
    if args.action == "set":
        policy = send_policy_pb2.SendPolicy(
            min_interval_seconds=args.min_interval,
            jitter_seconds=args.jitter,
            quiet_start=args.quiet_start,
            quiet_end=args.quiet_end,
            time_zone=args.time_zone,
            **{name: getattr(args, name) for name in INTS},
        )
        request = send_policy_pb2.SetSendPolicyRequest(instance_id=args.instance, policy=policy)
        if args.optout_list is not None:
            request.optout_list = args.optout_list
        state = await ctx.call(stub.SetSendPolicy, request)
        if not ctx.json:
            ctx.print(_t(ctx, "changed", instance=args.instance))
    else:
        state = await ctx.call(stub.GetSendPolicy, send_policy_pb2.GetSendPolicyRequest(instance_id=args.instance))
    data = state_dict(state)
    ctx.emit_json(data) if ctx.json else _print_state(ctx, data)
    return EXIT_OK


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
    cmd = sub.add_parser(
        "policy",
        help="an instance's send policy: show (budgets used and left), set, history (operator)",
        description=(
            "show: the policy and its budgets now. set: replaces the whole policy with the flags given "
            "(a flag left out is 0: no limit; no flag at all: no policy). history: who changed it, when."
        ),
        **kwargs,
    )
    cmd.add_argument("action", choices=["show", "set", "history"])
    cmd.add_argument("instance", help="instance id")
    cmd.add_argument("--min-interval", type=float, default=0.0, help="seconds between two sends")
    cmd.add_argument("--jitter", type=float, default=0.0, help="random extra seconds (0..jitter) after each send")
    for name in INTS:
        cmd.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=0)
    cmd.add_argument("--quiet-start", default="", help="local HH:MM the quiet hours start")
    cmd.add_argument("--quiet-end", default="", help="local HH:MM they end")
    cmd.add_argument("--time-zone", default="", help="IANA time zone of the quiet hours [UTC]")
    cmd.add_argument("--optout-list", default=None, help="shared opt-out list name ('' = its own); left out: kept")
    cmd.add_argument("--limit", type=int, default=50, help="history: at most N changes [50]")
    cmd.set_defaults(run=cmd_policy)
