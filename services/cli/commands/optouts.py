"""`wapi-guard optouts list|add|remove INSTANCE [RECIPIENT]`: the instance's suppression list (its
own, or the shared list it names). A removal is audited with who and the note."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from services.cli.context import EXIT_OK, EXIT_USAGE, Context, Subparsers, say
from services.cli.output import table
from services.i18n import PROTECTION_CLI_TEXTS


def _t(ctx: Context, name: str, /, **values: Any) -> str:
    return say(PROTECTION_CLI_TEXTS, ctx.lang, name, **values)


async def cmd_optouts(ctx: Context) -> int:
    from services.api.wapiguard.v1 import optouts_pb2, optouts_pb2_grpc

    args = ctx.args
    stub = optouts_pb2_grpc.OptOutServiceStub(ctx.channel())
    if args.action in ("add", "remove"):
        if not args.recipient:
            ctx.warn(f"optouts {args.action}: RECIPIENT")
            return EXIT_USAGE
        fields = {"instance_id": args.instance, "recipient": args.recipient, "note": args.note}
        if args.action == "add":
            changed = await ctx.call(stub.AddOptOut, optouts_pb2.AddOptOutRequest(**fields))
            texts = ("optout_added", "optout_present")
        else:
            changed = await ctx.call(stub.RemoveOptOut, optouts_pb2.RemoveOptOutRequest(**fields))
            texts = ("optout_removed", "optout_absent")
        if ctx.json:
            ctx.emit_json({"instance_id": args.instance, "recipient": changed.recipient, "changed": changed.changed})
        else:
            ctx.print(_t(ctx, texts[0] if changed.changed else texts[1], recipient=changed.recipient))
        return EXIT_OK
    page = await ctx.call(
        stub.ListOptOuts, optouts_pb2.ListOptOutsRequest(instance_id=args.instance, page_size=args.limit)
    )
    rows = [
        {
            "recipient": o.recipient,
            "source": o.source,
            "created_at": o.created_at.ToDatetime(UTC).isoformat(timespec="seconds"),
            "created_by": o.created_by,
            "detail": o.detail,
        }
        for o in page.opt_outs
    ]
    if ctx.json:
        ctx.emit_json(rows)
    elif not rows:
        ctx.print(_t(ctx, "optouts_none", instance=args.instance))
    else:
        headers = [_t(ctx, k) for k in ("recipient", "source", "when", "by", "detail")]
        cells = [[r["recipient"], r["source"], r["created_at"], r["created_by"], r["detail"] or "-"] for r in rows]
        table(headers, cells, [None] * len(cells), ctx.out, color=ctx.color)
    return EXIT_OK


def register(sub: Subparsers, kwargs: dict[str, Any]) -> None:
    cmd = sub.add_parser(
        "optouts",
        help="an instance's opt-out (suppression) list: list, add, remove (operator)",
        description="Recipients never messaged again by the instance (or by every instance of its shared list).",
        **kwargs,
    )
    cmd.add_argument("action", choices=["list", "add", "remove"])
    cmd.add_argument("instance", help="instance id")
    cmd.add_argument("recipient", nargs="?", default="", help="phone (add/remove)")
    cmd.add_argument("--note", default="", help="why (kept in the audit)")
    cmd.add_argument("--limit", type=int, default=100, help="list: at most N [100]")
    cmd.set_defaults(run=cmd_optouts)
