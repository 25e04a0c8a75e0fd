"""`wapi-guard status INSTANCE`: one instance's health in detail."""

from __future__ import annotations

from typing import Any

from services.cli.context import EXIT_OK, Context, Subparsers
from services.cli.output import instance_dict, parse_time, webhooks_line
from services.i18n import ago


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
    status = sub.add_parser(
        "status", help="one instance's health in detail (operator)", description="One instance in detail.", **kwargs
    )
    status.add_argument("instance_id", metavar="INSTANCE", help="instance id")
    status.add_argument("--refresh", action="store_true", help="probe the instance now")
    status.set_defaults(run=cmd_status)


async def cmd_status(ctx: Context) -> int:
    from services.api.wapiguard.v1 import instance_health_pb2

    request = instance_health_pb2.GetInstanceHealthRequest(instance_id=ctx.args.instance_id, refresh=ctx.args.refresh)
    h = await ctx.call(ctx.health_stub().GetInstanceHealth, request)
    data = instance_dict(h, ctx.lang)
    if ctx.json:
        ctx.emit_json({"instance": data})
        return EXIT_OK

    def when(field: str) -> str:
        at = parse_time(data[field])
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
